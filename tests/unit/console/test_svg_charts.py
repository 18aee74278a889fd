from decimal import Decimal
from xml.etree import ElementTree

from services.console.svg_charts import Point, bar_chart, line_chart

NS = {"svg": "http://www.w3.org/2000/svg"}


def test_bars_are_as_tall_as_their_values_and_carry_exact_figures():
    svg = ElementTree.fromstring(bar_chart("Cost", [Point("10:00", Decimal("1.5"), "$1.50"),
                                                    Point("11:00", Decimal("3"), "$3.00"),
                                                    Point("12:00", Decimal(0), "$0.00")], "$3.00"))
    bars = svg.findall("svg:rect", NS)
    heights = [float(bar.get("height")) for bar in bars]
    assert heights[1] == 2 * heights[0] and heights[2] == 0
    assert [bar.find("svg:title", NS).text for bar in bars] == ["10:00: $1.50", "11:00: $3.00", "12:00: $0.00"]


def test_labels_are_escaped():
    svg = bar_chart("<script>", [Point("<b>", 1, "&")], "1")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&lt;b&gt;" in svg
    ElementTree.fromstring(svg)  # still well-formed


def test_a_line_marks_only_points_with_a_value_and_an_empty_chart_says_so():
    svg = ElementTree.fromstring(line_chart("rpm", [Point("a", 0, "0"), Point("b", 4, "4"), Point("c", 2, "2")], "4"))
    assert len(svg.findall("svg:circle", NS)) == 2
    assert len(svg.find("svg:polyline", NS).get("points").split()) == 3
    assert "no data" in line_chart("rpm", [], "0")
