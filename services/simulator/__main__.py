import argparse

import uvicorn

from services.simulator.app import create_app

parser = argparse.ArgumentParser(description="Local OpenAI-compatible LLM simulator")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=3010)
parser.add_argument("--name", default="simulator")
args = parser.parse_args()
uvicorn.run(create_app(args.name), host=args.host, port=args.port, log_level="warning", access_log=False)
