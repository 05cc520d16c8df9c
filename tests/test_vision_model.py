"""Send an image or a PDF to a running mlx-router and print the vision model's answer.

A manual check against a real model (pytest does not collect this file: see tests/conftest.py):

    python tests/test_vision_model.py --model mlx-community/Qwen2-VL-2B-Instruct-4bit \\
        --image photo.jpg --prompt "What is in this picture?" --stream

The file travels as a base64 ``data:`` URI in an ``image_url`` part, as OpenAI clients send it;
a PDF is rendered page by page by the server (see ``media`` in config.json). Warnings from the
server (pages left out, for instance) are printed from the ``X-MLX-Router-Warnings`` header.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import sys
from pathlib import Path
from typing import Any

import httpx

__all__ = ["main"]


def data_uri(path: Path) -> str:
    """The file as a ``data:`` URI; the type comes from its extension (PDFs by their header too)."""
    data = path.read_bytes()
    kind = "application/pdf" if data.startswith(b"%PDF") else mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.image or args.pdf)
    content = [{"type": "text", "text": args.prompt}, {"type": "image_url", "image_url": {"url": data_uri(path)}}]
    body: dict[str, Any] = {"model": args.model, "messages": [{"role": "user", "content": content}], "stream": args.stream}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.stream:
        body["stream_options"] = {"include_usage": True}
    return body


def print_warnings(response: httpx.Response) -> None:
    for warning in json.loads(response.headers.get("x-mlx-router-warnings", "[]")):
        print(f"warning: {warning}", file=sys.stderr)


def error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


def run(client: httpx.Client, body: dict[str, Any]) -> int:
    if not body["stream"]:
        response = client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            print(f"error {response.status_code}: {error_text(response)}", file=sys.stderr)
            return 1
        print_warnings(response)
        data = response.json()
        print(data["choices"][0]["message"]["content"])
        print(f"usage: {data['usage']}", file=sys.stderr)
        return 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            print(f"error {response.status_code}: {error_text(response)}", file=sys.stderr)
            return 1
        print_warnings(response)
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                print(f"\nerror: {chunk['error']['message']}", file=sys.stderr)
                return 1
            for choice in chunk.get("choices") or []:
                print(choice["delta"].get("content") or "", end="", flush=True)
            if chunk.get("usage"):
                print(f"\nusage: {chunk['usage']}", file=sys.stderr)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8800", help="the server (default: %(default)s)")
    parser.add_argument("--model", required=True, help="a vision model id from GET /v1/models")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="an image file (PNG, JPEG, WebP, BMP, GIF)")
    source.add_argument("--pdf", help="a PDF file")
    parser.add_argument("--prompt", default="Describe this in detail.", help="the question (default: %(default)r)")
    parser.add_argument("--stream", action="store_true", help="stream the answer as it is generated")
    parser.add_argument("--max-tokens", type=int, default=None, help="upper bound on the answer's tokens")
    parser.add_argument("--api-key", default=None, help="the server's API key, if it has one")
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        body = build_body(args)
    except OSError as exc:
        parser.error(f"cannot read the file: {exc}")
    try:
        with httpx.Client(base_url=args.url, headers=headers, timeout=httpx.Timeout(600.0, connect=10.0)) as client:
            return run(client, body)
    except httpx.HTTPError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
