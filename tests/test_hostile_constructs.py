"""Hostile inputs to the workflow constructs of loops, sub-workflows and images: each gets a
problem at its file, line and column with a fix, never a hang, a traceback or an exhausted
memory (the trial of the new constructs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_run_cli import assert_clean, lmflow

from runner.spec import check_file
from runner.spec.image_files import ImageFileError, read_image
from runner.spec.load import MAX_FILE_BYTES, read_document
from runner.spec.validate import MAX_INCLUDE_DEPTH


def including(tmp_path: Path, child: str) -> Path:
    path = tmp_path / "parent.yaml"
    path.write_text(f'version: 1\nsteps:\n  - id: part\n    workflow: "{child}"\n')
    return path


def with_image(tmp_path: Path, image: str) -> Path:
    path = tmp_path / "look.yaml"
    path.write_text(
        "version: 1\nsteps:\n  - id: look\n    model: qwen/qwen2.5-vl-7b\n    prompt: What is it?\n"
        f'    images: ["{image}"]\n'
    )
    return path


def only_error(path: Path) -> tuple[int, int, str, str]:
    workflow, problems = check_file(path)
    errors = [p for p in problems if p.is_error]
    assert workflow is None
    assert len(errors) == 1, errors
    return errors[0].line, errors[0].col, errors[0].rule, errors[0].message


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def test_a_pipe_as_sub_workflow_is_refused_without_waiting_for_a_writer(
    tmp_path: Path, fifo: Path
) -> None:
    line, col, rule, message = only_error(including(tmp_path, fifo.name))
    assert (line, col, rule) == (4, 15, "unreadable-workflow")
    assert "not a regular file" in message


def test_a_device_as_sub_workflow_is_refused_before_it_is_read(tmp_path: Path) -> None:
    line, _, rule, message = only_error(including(tmp_path, "/dev/zero"))
    assert (line, rule) == (4, "unreadable-workflow")
    assert "/dev/zero" in message and "not a regular file" in message


def test_a_directory_as_sub_workflow_says_it_is_one(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    _, _, rule, message = only_error(including(tmp_path, "parts"))
    assert rule == "unreadable-workflow"
    assert message.endswith("it is a directory")


def test_a_nul_byte_in_a_sub_workflow_path_is_a_problem(tmp_path: Path) -> None:
    _, _, rule, message = only_error(including(tmp_path, "part\\0.yaml"))
    assert rule == "unreadable-workflow"
    assert "NUL byte" in message


def test_a_workflow_read_from_an_endless_device_stops_at_the_size_limit() -> None:
    doc = read_document(Path("/dev/zero"))
    assert doc.data is None
    assert [p.rule for p in doc.problems] == ["file-too-large"]
    assert f"more than {MAX_FILE_BYTES:,} bytes" in doc.problems[0].message


def chain(tmp_path: Path, length: int) -> Path:
    """`top.yaml` including `c0.yaml`, which includes `c1.yaml`, ... `length` files deep."""
    for i in range(length):
        step = f"workflow: c{i + 1}.yaml" if i + 1 < length else 'run: ["true"]'
        (tmp_path / f"c{i}.yaml").write_text(f"version: 1\nsteps:\n  - id: s{i}\n    {step}\n")
    top = tmp_path / "top.yaml"
    top.write_text("version: 1\nsteps:\n  - id: top\n    workflow: c0.yaml\n")
    return top


def test_a_chain_of_sub_workflows_at_the_depth_limit_is_valid(tmp_path: Path) -> None:
    workflow, problems = check_file(chain(tmp_path, MAX_INCLUDE_DEPTH))
    assert [p for p in problems if p.is_error] == []
    assert workflow is not None


def test_a_chain_of_sub_workflows_deeper_than_the_stack_is_refused_at_its_last_link(
    tmp_path: Path, lmflow_cli
) -> None:
    top = chain(tmp_path, 3 * MAX_INCLUDE_DEPTH)
    outcome = lmflow_cli("validate", "--offline", str(top))
    assert outcome.exit_code == 2
    last = f"c{MAX_INCLUDE_DEPTH - 1}.yaml:4:15: error:"
    assert last in outcome.stdout
    assert "[workflow-too-deep]" in outcome.stdout


def test_an_image_that_is_a_pipe_is_refused_without_waiting(tmp_path: Path, fifo: Path) -> None:
    line, col, rule, message = only_error(with_image(tmp_path, fifo.name))
    assert (line, col, rule) == (6, 14, "bad-image")
    assert "not a regular file" in message


def test_an_image_that_is_an_endless_device_is_refused_before_it_is_read() -> None:
    with pytest.raises(ImageFileError, match="not a regular file"):
        read_image(Path("/dev/zero"))


def test_a_nul_byte_in_an_image_path_is_a_problem(tmp_path: Path) -> None:
    _, _, rule, message = only_error(with_image(tmp_path, "shot\\0.png"))
    assert rule == "bad-image"
    assert "NUL byte" in message


def test_a_run_failed_by_an_output_says_why_on_the_terminal(tmp_path: Path) -> None:
    (tmp_path / "nearest.yaml").write_text(
        "version: 1\nsteps:\n  - id: say\n    run: [echo, hi]\n"
        'outputs:\n  best: "{{ [[1.0, 0.0]] | nearest([1.0, 0.0], k=0) }}"\n'
    )
    run = lmflow(tmp_path, "run", "--no-log", "nearest.yaml")
    assert run.code == 1
    assert_clean(run)
    assert "output 'best': nearest: k must be a whole number of at least 1, not 0" in run.stderr


def test_a_failed_step_is_not_told_twice(tmp_path: Path) -> None:
    (tmp_path / "fails.yaml").write_text('version: 1\nsteps:\n  - id: nope\n    run: ["false"]\n')
    run = lmflow(tmp_path, "run", "--no-log", "fails.yaml")
    assert run.code == 1
    assert run.stderr.count("exited with") == 1, run.stderr


def test_batch_record_into_a_device_is_a_bad_argument_before_any_row(tmp_path: Path) -> None:
    (tmp_path / "echo.yaml").write_text("version: 1\nsteps:\n  - id: say\n    run: [echo, hi]\n")
    (tmp_path / "rows.csv").write_text("x\n1\n")
    run = lmflow(
        tmp_path, "batch", "--record", "/dev/null", "-o", "out.jsonl", "echo.yaml", "rows.csv"
    )
    assert run.code == 2
    assert_clean(run)
    assert "--record /dev/null is not a directory" in run.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("name", ["pipe.yaml", "/dev/zero", "prompt\\0.md"])
def test_a_prompt_file_that_is_no_regular_file_is_refused_before_it_is_read(
    tmp_path: Path, fifo: Path, name: str
) -> None:
    path = tmp_path / "review.yaml"
    path.write_text(
        "version: 1\nsteps:\n  - id: review\n    model: qwen/qwen3-coder-30b\n"
        f'    prompt_file: "{name}"\n'
    )
    line, col, rule, message = only_error(path)
    assert (line, col, rule) == (5, 18, "unreadable-prompt-file")
    assert "not a regular file" in message or "NUL byte" in message
