from shared.metric_labels import BoundedLabel


def test_values_pass_until_the_limit_then_become_other():
    model = BoundedLabel(2)
    assert [model("a"), model("b"), model("c"), model("a"), model("d")] == ["a", "b", "other", "a", "other"]


def test_a_missing_value_is_none_and_takes_no_slot():
    endpoint = BoundedLabel(1)
    assert [endpoint(None), endpoint(""), endpoint("/v1/chat/completions")] == ["none", "none", "/v1/chat/completions"]
