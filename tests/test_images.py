"""Images for vision models: `images:` on agent steps, the vision model check, images in
run logs and cassettes by reference, and MCP tool images shown to vision models.

LM Studio is the loopback fake (its vision model `qwen/qwen2.5-vl-7b` echoes what it read
from each image part; its other models refuse images as LM Studio does); the MCP server is
the SDK fixture server as a real process (its `picture` tool returns a 1x1 PNG).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.lmstudio import FakeLMStudio, image_summary
from mcp_support import FIXTURE_SERVER, TAG_VARIABLE
from png import solid

from runner.agent import AgentLimits, AgentTask, run_agent
from runner.chat import ChatRequest, ChatResponse, Image, ToolCall, ToolResult, ToolSpec
from runner.errors import StepFailedError
from runner.runlog import Redactor
from runner.spec.image_files import MAX_IMAGE_BYTES
from runner.step_images import step_images

VISION = "qwen/qwen2.5-vl-7b"
TEXT_ONLY = "qwen/qwen3-coder-30b"
RED = solid(4, 3)
RED_DIGEST = Image("image/png", RED).digest
PIXEL_DIGEST = "00023965829ad187"  # the fixture server's 1x1 PNG (checked below)


def workflow(directory: Path, images: str, *, model: str = VISION, extra: str = "") -> Path:
    path = directory / "look.yaml"
    path.write_text(
        "version: 1\nname: look\n"
        f"defaults: {{model: {model}}}\n"
        "inputs:\n  picture: {type: string, default: red.png}\n"
        f"{extra}"
        "steps:\n"
        "  - id: look\n"
        "    prompt: What colour is the picture?\n"
        f"    images: {images}\n"
        "outputs:\n  said: '{{ steps.look.output }}'\n"
    )
    return path


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory of the run (its `.lmflow/runs` lands here), with red.png."""
    (tmp_path / "red.png").write_bytes(RED)
    (tmp_path / "notes.txt").write_text("not a picture\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_dir(folder: Path) -> Path:
    (found,) = (folder / ".lmflow" / "runs").iterdir()
    return found


def log_text(folder: Path) -> str:
    return (run_dir(folder) / "events.jsonl").read_text()


def events(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_text(folder).splitlines()]


def image_parts(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        part
        for message in request["messages"]
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


# --- validation ---------------------------------------------------------------------------


def test_validate_reports_a_missing_file_and_a_non_image_at_their_entries(
    folder: Path, lmflow_cli: Callable[..., Any]
) -> None:
    path = workflow(folder, '[red.png, notes.txt, gone.png, "{{ inputs.picture }}"]')
    outcome = lmflow_cli("validate", "--offline", str(path))
    assert outcome.exit_code == 2
    assert (
        f"{path}:9:23: error: image 1 of step 'look': image {folder}/notes.txt is not a PNG"
        in outcome.stdout
    )
    assert (
        f"{path}:9:34: error: image 2 of step 'look': image {folder}/gone.png cannot be read"
        in outcome.stdout
    )
    assert "[bad-image]" in outcome.stdout and "image 0" not in outcome.stdout


def test_validate_refuses_a_file_url_instead_of_reading_it_as_a_path(
    folder: Path, lmflow_cli: Callable[..., Any]
) -> None:
    outcome = lmflow_cli("validate", "--offline", str(workflow(folder, "['file:///etc/passwd']")))
    assert outcome.exit_code == 2
    assert "image 'file:///etc/passwd' is a file: URL, which lmflow does not read" in (
        outcome.stdout
    )
    assert "No such file" not in outcome.stdout


def test_validate_refuses_an_oversize_file_naming_it_and_the_limit(
    folder: Path, lmflow_cli: Callable[..., Any]
) -> None:
    with (folder / "huge.png").open("wb") as file:
        file.write(RED)
        file.truncate(MAX_IMAGE_BYTES + 1)  # sparse: the size is checked before any read
    outcome = lmflow_cli("validate", "--offline", str(workflow(folder, "[huge.png]")))
    assert outcome.exit_code == 2
    assert (
        f"image {folder}/huge.png is {MAX_IMAGE_BYTES + 1:,} bytes, above the limit of "
        f"{MAX_IMAGE_BYTES:,} bytes" in outcome.stdout
    )


def test_validate_refuses_image_entries_that_could_send_a_secret(
    folder: Path, lmflow_cli: Callable[..., Any]
) -> None:
    path = workflow(folder, '["{{ env.SHOT_URL }}", "https://me:hunter22@pics.example/a.png"]')
    outcome = lmflow_cli("validate", "--offline", str(path))
    assert outcome.exit_code == 2
    assert "reads env" in outcome.stdout and "[secret-in-image]" in outcome.stdout
    assert "is a URL with a password in it [literal-secret]" in outcome.stdout


def test_validate_accepts_a_png_a_data_uri_a_url_and_templates(
    folder: Path, lmflow_cli: Callable[..., Any]
) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(RED).decode()
    images = f'[red.png, "{data_uri}", "https://example.org/a.png", "{{{{ inputs.picture }}}}"]'
    outcome = lmflow_cli("validate", "--offline", str(workflow(folder, images)))
    assert outcome.exit_code == 0, outcome.stdout


# --- a run with images --------------------------------------------------------------------


def test_a_png_reaches_the_vision_model_as_an_image_part(
    folder: Path, fake_lmstudio: FakeLMStudio, lmflow_cli: Callable[..., Any]
) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(solid(2, 2, (0, 0, 255))).decode()
    path = workflow(folder, f'[red.png, "{data_uri}", "https://example.org/a.png"]')
    outcome = lmflow_cli("run", str(path), "--base-url", fake_lmstudio.url, "--json", "-q")
    assert outcome.exit_code == 0, outcome.stderr
    (request,) = fake_lmstudio.chat_requests
    parts = image_parts(request)
    assert parts[0]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(RED).decode(
        "ascii"
    )
    assert parts[1]["image_url"]["url"] == data_uri
    assert parts[2]["image_url"]["url"] == "https://example.org/a.png"
    said = json.loads(outcome.stdout)["outputs"]["said"]
    assert f"[image image/png 4x3 sha256:{RED_DIGEST} 73 bytes]" in said
    assert "[image image/png 2x2 sha256:" in said and "[image url https://example.org/a.png]" in (
        said
    )


def test_the_log_names_images_by_reference_never_by_their_data(
    folder: Path, fake_lmstudio: FakeLMStudio, lmflow_cli: Callable[..., Any]
) -> None:
    outcome = lmflow_cli("run", str(workflow(folder, "[red.png]")), "--base-url", fake_lmstudio.url)
    assert outcome.exit_code == 0, outcome.stderr
    encoded = base64.b64encode(RED).decode()
    assert encoded not in log_text(folder)
    assert encoded not in (run_dir(folder) / "result.json").read_text()
    (request,) = [e for e in events(folder) if e["type"] == "llm_request"]
    assert request["messages"][0]["content"][1] == {
        "type": "image",
        "sha256": RED_DIGEST,
        "media_type": "image/png",
        "bytes": len(RED),
    }


def test_a_model_without_vision_is_refused_naming_the_vision_models(
    folder: Path, fake_lmstudio: FakeLMStudio, lmflow_cli: Callable[..., Any]
) -> None:
    path = workflow(folder, "[red.png]", model=TEXT_ONLY)
    outcome = lmflow_cli("run", str(path), "--base-url", fake_lmstudio.url)
    assert outcome.exit_code == 3
    assert f"{path}:9:13: step 'look' sends images, but model '{TEXT_ONLY}' has no vision" in (
        outcome.stderr
    )
    assert fake_lmstudio.chat_requests == []
    validated = lmflow_cli("validate", str(path), "--base-url", fake_lmstudio.url)
    assert validated.exit_code == 3  # the model check's errors: the environment is not ready
    assert f"vision models on {fake_lmstudio.url}: {VISION}" in validated.stdout


@pytest.mark.parametrize(
    ("picture", "problem"),
    [
        ("notes.txt", "notes.txt is not a PNG, JPEG, GIF or WebP image (by its content)"),
        ("huge.png", f"above the limit of {MAX_IMAGE_BYTES:,} bytes"),
    ],
)
def test_a_rendered_path_is_checked_when_the_step_runs(
    folder: Path,
    fake_lmstudio: FakeLMStudio,
    lmflow_cli: Callable[..., Any],
    picture: str,
    problem: str,
) -> None:
    with (folder / "huge.png").open("wb") as file:
        file.truncate(MAX_IMAGE_BYTES + 1)
    path = workflow(folder, '["{{ inputs.picture }}"]')
    outcome = lmflow_cli(
        "run", str(path), "--base-url", fake_lmstudio.url, "-i", f"picture={picture}"
    )
    assert outcome.exit_code == 1
    (finished,) = [e for e in events(folder) if e["type"] == "step_finished"]
    assert finished["status"] == "failed" and problem in finished["error"]
    assert fake_lmstudio.chat_requests == []


def test_an_image_url_carrying_a_secret_fails_the_step() -> None:
    redactor = Redactor(["s3cr3t-token"])
    with pytest.raises(StepFailedError, match="image URL holds a secret"):
        step_images(
            ["https://pics.example/a.png?key={{ inputs.key }}"],
            {"inputs": {"key": "s3cr3t-token"}},
            Path("w.yaml"),
            redactor.text,
        )


# --- cassettes ----------------------------------------------------------------------------


def test_a_cassette_keeps_images_as_files_and_replays_by_their_hash(
    folder: Path, fake_lmstudio: FakeLMStudio, lmflow_cli: Callable[..., Any]
) -> None:
    path = workflow(folder, '["{{ inputs.picture }}"]')
    cassette = folder / "cassettes" / "look.yaml"
    recorded = lmflow_cli(
        "run", str(path), "--base-url", fake_lmstudio.url, "--record", str(cassette), "--json"
    )
    assert recorded.exit_code == 0, recorded.stderr
    text = cassette.read_text()
    assert base64.b64encode(RED).decode() not in text
    assert f"sha256: {RED_DIGEST}, media_type: image/png, bytes: {len(RED)}" in text
    assert (folder / "cassettes" / "look.images" / f"{RED_DIGEST}.png").read_bytes() == RED

    replayed = lmflow_cli("run", str(path), "--replay", str(cassette), "--json", "--no-log")
    assert replayed.exit_code == 0, replayed.stderr
    assert json.loads(replayed.stdout)["outputs"] == json.loads(recorded.stdout)["outputs"]

    (folder / "blue.png").write_bytes(solid(4, 3, (0, 0, 255)))
    log = folder / "miss.jsonl"
    other = lmflow_cli(
        "run", str(path), "--replay", str(cassette), "-i", "picture=blue.png", "--log", str(log)
    )
    assert other.exit_code == 3
    told = log.read_text()
    assert "replay miss" in told and f"{{type: image, sha256: {RED_DIGEST}" in told
    blue = Image("image/png", solid(4, 3, (0, 0, 255))).digest
    assert f"{{type: image, sha256: {blue}" in told


# --- MCP tool images -----------------------------------------------------------------------


def picture_workflow(directory: Path, model: str, tag: str, steps: str | None = None) -> Path:
    server = {"command": sys.executable, "args": [str(FIXTURE_SERVER)], "env": {TAG_VARIABLE: tag}}
    path = directory / "picture.yaml"
    path.write_text(
        "version: 1\nname: picture\n"
        f"defaults: {{model: {model}}}\n"
        f"mcp_servers:\n  fx: {json.dumps(server)}\n"
        "steps:\n"
        + (
            steps
            or "  - id: look\n    mcp: [fx]\n    tools: [picture]\n"
            "    prompt: Take a picture and say what is on it.\n"
        )
    )
    return path


def describe_what_arrived(request: dict[str, Any]) -> str:
    """The scripted model's answer: what image parts its last user turn carried."""
    last = request["messages"][-1]
    parts = last["content"] if isinstance(last["content"], list) else []
    seen = [image_summary(p) for p in parts if p.get("type") == "image_url"]
    return "saw " + (" ".join(seen) or "no image")


def picture_run(
    folder: Path, make: Callable[..., FakeLMStudio], cli: Callable[..., Any], model: str, tag: str
) -> FakeLMStudio:
    """A run whose model calls the fixture server's `picture` tool, then says what it saw."""
    lm = make(script=[[("picture", {})], describe_what_arrived])
    outcome = cli("run", str(picture_workflow(folder, model, tag)), "--base-url", lm.url, "-q")
    assert outcome.exit_code == 0, outcome.stderr
    return lm


def test_a_vision_model_is_shown_the_images_a_tool_returned(
    folder: Path,
    make_fake_lmstudio: Callable[..., FakeLMStudio],
    lmflow_cli: Callable[..., Any],
    process_tag: str,
) -> None:
    lm = picture_run(folder, make_fake_lmstudio, lmflow_cli, VISION, process_tag)
    saved = run_dir(folder) / "mcp-content" / f"{PIXEL_DIGEST}.png"
    assert Image("image/png", saved.read_bytes()).digest == PIXEL_DIGEST
    second = lm.chat_requests[1]["messages"]
    assert [m["role"] for m in second[-3:]] == ["assistant", "tool", "user"]
    assert f"saved to {saved}" in second[-2]["content"]
    (result,) = [e for e in events(folder) if e["type"] == "tool_result"]
    assert result["images"] == [
        {"type": "image", "sha256": PIXEL_DIGEST, "media_type": "image/png", "bytes": 67}
    ]
    (answer,) = [e for e in events(folder) if e["type"] == "llm_response" and e["round"] == 2]
    assert answer["content"] == f"saw [image image/png 1x1 sha256:{PIXEL_DIGEST} 67 bytes]"
    assert "base64" not in log_text(folder)


def test_a_model_without_vision_gets_the_saved_file_named_in_text_only(
    folder: Path,
    make_fake_lmstudio: Callable[..., FakeLMStudio],
    lmflow_cli: Callable[..., Any],
    process_tag: str,
) -> None:
    lm = picture_run(folder, make_fake_lmstudio, lmflow_cli, TEXT_ONLY, process_tag)
    second = lm.chat_requests[1]
    assert image_parts(second) == []
    assert second["messages"][-1]["role"] == "tool"
    assert "saved to" in second["messages"][-1]["content"]


HAND_ON = """\
  - id: shot
    tool: fx.picture
  - id: look
    prompt: What is on the picture?
    images: ["{{ steps.shot.output | saved_images }}"]
outputs:
  said: "{{ steps.look.output }}"
"""


def test_a_later_step_takes_a_tool_image_by_reference_also_in_a_replay(
    folder: Path,
    fake_lmstudio: FakeLMStudio,
    lmflow_cli: Callable[..., Any],
    process_tag: str,
) -> None:
    path = picture_workflow(folder, VISION, process_tag, HAND_ON)
    cassette = folder / "picture-cassette.yaml"
    recorded = lmflow_cli(
        "run", str(path), "--base-url", fake_lmstudio.url, "--record", str(cassette), "--json"
    )
    assert recorded.exit_code == 0, recorded.stderr
    expected = f"[image image/png 1x1 sha256:{PIXEL_DIGEST} 67 bytes]"
    assert expected in json.loads(recorded.stdout)["outputs"]["said"]
    assert (folder / "picture-cassette.images" / f"{PIXEL_DIGEST}.png").is_file()

    for found in (folder / ".lmflow").rglob("mcp-content"):  # the replay saves its own copy
        for file in found.iterdir():
            file.unlink()
    replayed = lmflow_cli("run", str(path), "--replay", str(cassette), "--json")
    assert replayed.exit_code == 0, replayed.stderr
    assert json.loads(replayed.stdout)["outputs"] == json.loads(recorded.stdout)["outputs"]


# --- the engine: tool images in the conversation ---------------------------------------------


class _Model:
    """Calls `picture` once, then answers; keeps the requests."""

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        if len(self.requests) == 1:
            return ChatResponse(None, (ToolCall("c1", "picture", "{}"),), "tool_calls")
        return ChatResponse("a red square", finish_reason="stop")


class _Pictures:
    def specs(self) -> list[ToolSpec]:
        return [ToolSpec("picture", "take a picture", {"type": "object"})]

    async def call(self, name: str, arguments: Any) -> ToolResult:
        return ToolResult("[image content: image/png]", images=(Image("image/png", RED),))


@pytest.mark.parametrize("max_rounds", [2, 5])
def test_tool_images_follow_the_tool_results_in_one_user_turn(max_rounds: int) -> None:
    """The images come after the tool messages (servers take images only in user turns); in
    the last round the note to answer joins that turn, so no two user turns follow."""
    model = _Model()
    task = AgentTask(model=VISION, prompt="look", vision=True)
    seen: list[tuple[str, dict[str, Any]]] = []
    limits = AgentLimits(max_rounds=max_rounds)
    result = asyncio.run(
        run_agent(model, task, _Pictures(), limits, lambda *event: seen.append(event))
    )
    assert result.output == "a red square"
    roles = [m["role"] for m in model.requests[1].messages]
    assert roles == ["user", "assistant", "tool", "user"]
    turn = model.requests[1].messages[-1]["content"]
    assert turn[1] == Image("image/png", RED)
    notes = [p["text"] for p in turn if isinstance(p, dict) and "last turn" in p.get("text", "")]
    assert len(notes) == (1 if max_rounds == 2 else 0)
    request = [fields for kind, fields in seen if kind == "llm_request"][1]
    assert request["messages"][-1]["content"][1]["sha256"] == RED_DIGEST


def test_a_model_without_vision_gets_no_image_turn() -> None:
    model = _Model()
    task = AgentTask(model=TEXT_ONLY, prompt="look")
    asyncio.run(run_agent(model, task, _Pictures(), AgentLimits(), lambda *_: None))
    assert [m["role"] for m in model.requests[1].messages] == ["user", "assistant", "tool"]


def test_resume_runs_a_step_again_when_its_image_file_changed(
    folder: Path, fake_lmstudio: FakeLMStudio, lmflow_cli: Callable[..., Any]
) -> None:
    path = workflow(folder, "[red.png]")
    assert lmflow_cli("run", str(path), "--base-url", fake_lmstudio.url).exit_code == 0
    again = lmflow_cli("run", str(path), "--base-url", fake_lmstudio.url, "--resume", "last")
    assert again.exit_code == 0 and len(fake_lmstudio.chat_requests) == 1  # reused
    (folder / "red.png").write_bytes(solid(4, 3, (0, 0, 255)))  # same name, other picture
    changed = lmflow_cli("run", str(path), "--base-url", fake_lmstudio.url, "--resume", "last")
    assert changed.exit_code == 0 and len(fake_lmstudio.chat_requests) == 2


def test_the_fake_refuses_images_for_a_model_without_vision(fake_lmstudio: FakeLMStudio) -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}
    message = {"role": "user", "content": [{"type": "text", "text": "look"}, part]}
    for model, status in ((TEXT_ONLY, 400), (VISION, 200)):
        answer = httpx.post(
            f"{fake_lmstudio.url}/v1/chat/completions",
            json={"model": model, "messages": [message]},
        )
        assert answer.status_code == status, answer.text
        if status == 400:
            assert "Model does not support images" in answer.text
    assert answer.json()["choices"][0]["message"]["content"] == (
        "echo: look [image url https://example.org/a.png]"
    )


def test_resume_runs_again_only_the_item_whose_image_changed(
    folder: Path, fake_lmstudio: FakeLMStudio, lmflow_cli: Callable[..., Any]
) -> None:
    (folder / "blue.png").write_bytes(solid(4, 3, (0, 0, 255)))
    path = folder / "items.yaml"
    path.write_text(
        f"version: 1\nname: items\ndefaults: {{model: {VISION}}}\nsteps:\n"
        "  - id: look\n    for_each: [red.png, blue.png]\n"
        "    prompt: What colour is it?\n    images: ['{{ item }}']\n"
    )
    assert lmflow_cli("run", str(path), "--base-url", fake_lmstudio.url).exit_code == 0
    assert len(fake_lmstudio.chat_requests) == 2
    (folder / "blue.png").write_bytes(solid(4, 3, (0, 255, 0)))  # same name, other picture
    again = lmflow_cli("run", str(path), "--base-url", fake_lmstudio.url, "--resume", "last")
    assert again.exit_code == 0 and len(fake_lmstudio.chat_requests) == 3
    green = Image("image/png", solid(4, 3, (0, 255, 0))).digest
    assert f"sha256:{green}" in image_summary(image_parts(fake_lmstudio.chat_requests[2])[0])
