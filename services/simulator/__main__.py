import argparse

import uvicorn

from services.simulator.app import KINDS, create_app

parser = argparse.ArgumentParser(description="Local LLM simulator: OpenAI-compatible, Azure OpenAI or Anthropic")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=3010)
parser.add_argument("--name", default="simulator")
parser.add_argument("--kind", choices=KINDS, default="openai", help="the API it speaks")
args = parser.parse_args()
uvicorn.run(create_app(args.name, args.kind), host=args.host, port=args.port, log_level="warning", access_log=False)
