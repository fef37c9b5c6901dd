"""The docs' commands against today's CLI: every `sedeploy ...` line parses, and every command runs.

1. Every command line in README.md, docs/*.md, the Makefile and the commands' own `--help` examples
   is parsed by click exactly as `sedeploy` would parse it (group, then subcommand, types and
   validation callbacks included) without running it; all failures are reported in one message.
2. Every command of `sedeploy --help` runs end to end on tiny data, in the documented form: either
   here, or in the test named for it in END_TO_END (checked to exist and to run that command), so a
   new command without such a run fails test_every_command_runs_somewhere. `make demo`'s commands
   run in order on tiny data (slow).
3. Statements the README makes that code can check: the metadata keys, the Predictor example, and
   how serve's batching options meet a config.pbtxt.
"""
from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import click
import pytest

from sedeploy.core.hardware import has_bf16

from conftest import assert_one_line_error
from sedeploy.cli import cli

ROOT = Path(__file__).resolve().parents[1]
# docs/MUTATION.md is another branch's; it is read like the others once it lands
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# A command line starts with `sedeploy` (after VAR=value and `time`), or runs it as `python -m sedeploy` /
# `torchrun ... -m sedeploy`; the Makefile calls it as $(SEDEPLOY).
LAUNCHER = re.compile(r"^\s*(?:[A-Za-z_]\w*=\S*\s+)*(?:time\s+)?"
                      r"(?:\$\(SEDEPLOY\)|(?:\S*bin/)?sedeploy|(?:python3?|torchrun)\b[^`|;]*?-m sedeploy)(?=\s|$)")
# shell operators end a command; `->` ends one in the overview diagrams ("command -> what it writes")
SHELL_STOP = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1", "->"}
REDIRECT = re.compile(r"^(?:\d?>>?|&>|<)")
# What the docs may write in a command that is not a value the test can give: each substitution says why.
SUBSTITUTE = [
    (re.compile(r"\$\(DEMO\)"), "demo"),            # the Makefile's variable, its default
    (re.compile(r"\$\{?[A-Za-z_]\w*\}?"), "0"),     # a shell loop variable (`--seed $seed`)
]


def _clean(line: str) -> Optional[List[str]]:
    """argv after `sedeploy` for one shell line (comments, pipes and redirections cut), or None."""
    for pat, value in SUBSTITUTE[:1]:
        line = pat.sub(value, line)
    m = LAUNCHER.search(line)
    if m is None:
        return None
    rest = line[m.end():]
    for pat, value in SUBSTITUTE[1:]:
        rest = pat.sub(value, rest)
    try:
        words = shlex.split(rest, comments=True)
    except ValueError:  # an unbalanced quote: the line itself is the problem, let parsing say so
        words = rest.split()
    argv: List[str] = []
    for w in words:
        if w in SHELL_STOP or REDIRECT.match(w):
            break
        argv.append(w)
    return argv


def _joined(lines: List[str]) -> Iterator[Tuple[int, str]]:
    """(line number, line) with backslash-continued lines joined."""
    buf, start = "", 0
    for i, ln in enumerate(lines, 1):
        if not buf:
            start = i
        if ln.rstrip().endswith("\\"):
            buf += ln.rstrip()[:-1] + " "
            continue
        yield start, buf + ln
        buf = ""
    if buf:
        yield start, buf


def _markdown_commands(path: Path) -> Iterator[Tuple[str, str]]:
    """(where, text) of every command in code blocks and inline code spans of a markdown file."""
    lines = path.read_text().splitlines()
    prose: List[Tuple[int, str]] = []          # code-block lines blanked: inline spans are looked for in the rest
    block: Optional[List[Tuple[int, str]]] = None
    for i, ln in enumerate(lines, 1):
        if ln.lstrip().startswith("```"):
            if block is not None:
                for n, joined in _joined([b for _, b in block]):
                    yield f"{path.name}:{block[n - 1][0]}", joined
            block = [] if block is None else None
        elif block is not None:
            block.append((i, ln))
        prose.append((i, ln if block is None and not ln.lstrip().startswith("```") else ""))
    # inline spans may wrap onto the next line of a paragraph, never across a blank line
    para: List[Tuple[int, str]] = []
    for i, ln in prose + [(len(lines) + 1, "")]:
        if ln.strip():
            para.append((i, ln))
            continue
        joined = "\n".join(text for _, text in para)
        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
            span = m.group(1).replace("\n", " ")
            if LAUNCHER.search(span):
                yield f"{path.name}:{para[joined[:m.start()].count(chr(10))][0]} (inline)", span
        para = []


def _makefile_commands() -> Iterator[Tuple[str, str]]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    for n, ln in _joined(lines):
        if "$(SEDEPLOY)" in ln:  # also inside the closing echo ("serve it: $(SEDEPLOY) serve ...")
            yield f"Makefile:{n}", ln[ln.index("$(SEDEPLOY)"):].rstrip('"')


def _help_examples() -> Iterator[Tuple[str, str]]:
    """The `Examples:` blocks of `sedeploy --help` and of every command's help."""
    for name, cmd in [("sedeploy", cli), *sorted(cli.commands.items())]:
        for ln in (cmd.help or "").splitlines():
            if ln.strip().startswith(("sedeploy ", "torchrun ")):
                yield f"sedeploy {name} --help" if name != "sedeploy" else "sedeploy --help", ln.strip()


def doc_commands() -> List[Tuple[str, str, List[str]]]:
    """(where, text, argv) of every documented command; && and ; chains give one entry per command."""
    found = []
    sources = [c for p in DOC_FILES for c in _markdown_commands(p)]
    sources += list(_makefile_commands()) + list(_help_examples())
    for where, text in sources:
        for part in re.split(r"&&|;|\|\|", text):
            argv = _clean(part)
            if argv is not None:
                found.append((where, part.strip(), argv))
    return found


# Inline mentions that are not command lines, each with the reason it is not parsed.
NOT_A_COMMAND = {
    "elided": "contains `...`: the options are the ones of the command shown just before it",
}


def skip_reason(argv: List[str]) -> Optional[str]:
    if "..." in argv:
        return NOT_A_COMMAND["elided"]
    return None


def parse(argv: List[str], bare_ok: bool = False) -> Optional[str]:
    """None when `sedeploy ARGV` parses (nothing runs), else the parser's message. bare_ok: a command name
    alone is a mention, not a command line (`sedeploy infer`'s preprocessing, in prose)."""
    if not argv:
        return None  # `sedeploy` itself named in prose
    try:
        with cli.make_context("sedeploy", list(argv), resilient_parsing=False) as ctx:
            rest = [*ctx._protected_args, *ctx.args] if hasattr(ctx, "_protected_args") else \
                [*ctx.protected_args, *ctx.args]
            if not rest:
                return None  # `sedeploy` alone, or a group option
            name, cmd, args = cli.resolve_command(ctx, rest)
            if bare_ok and len(argv) == 1:
                return None  # the name exists
            with cmd.make_context(name, args, parent=ctx, resilient_parsing=False):
                return None
    except click.exceptions.Exit:
        return None  # --help / --version
    except click.ClickException as e:
        return e.format_message().splitlines()[0]


def test_doc_commands_are_found():
    """The extraction itself: the forms the docs use are all seen (a broken regex would find nothing)."""
    cmds = doc_commands()
    assert len(cmds) > 60, len(cmds)
    assert any(w.startswith("Makefile") for w, _, _ in cmds)
    assert any("(inline)" in w for w, _, _ in cmds)
    assert any(a[:1] == ["train"] and "torchrun" in t for _, t, a in cmds)           # torchrun -m sedeploy
    assert any(a[:1] == ["bench"] and "--save-csv" in a for _, _, a in cmds)          # a continued line
    infer_head = [a for _, t, a in cmds if "| head" in t and a[:1] == ["infer"]]
    assert infer_head and all("head" not in a for a in infer_head)                    # the pipe is cut
    assert not any(a and a[-1].startswith("#") for _, _, a in cmds)                   # comments are cut
    assert {a[0] for _, _, a in cmds if a} >= set(cli.commands)                       # every command documented


def test_every_doc_command_parses():
    bad, skipped = [], []
    for where, text, argv in doc_commands():
        why = skip_reason(argv)
        if why:
            skipped.append(where)
            continue
        err = parse(argv, bare_ok="(inline)" in where)
        if err:
            bad.append(f"{where}: `{text}`: {err}")
    assert not bad, f"{len(bad)} documented command(s) do not parse:\n" + "\n".join(bad)


def test_parse_rejects_what_the_cli_rejects():
    """parse() is as strict as the CLI: unknown options, bad choices, bad types, missing arguments."""
    assert parse(["bench", "--json", "b.json"]) is not None          # --json is a flag: b.json is an extra argument
    assert parse(["bench", "--save-json", "b.json"]) is None
    assert parse(["train", "--epochs", "many"]) is not None
    assert parse(["train", "--model", "resnet"]) is not None
    assert parse(["infer", "--topk", "3"]) is not None               # IMAGES missing
    assert parse(["frobnicate"]) is not None
    assert parse(["export", "--ckpt", "best.pt", "--no-such-option"]) is not None
    assert parse(["infer"]) is not None and parse(["infer"], bare_ok=True) is None   # a bare name in prose


def test_parse_runs_nothing(monkeypatch, tmp_path):
    """Parsing a command does not call it: the callback is never reached."""
    called = []
    monkeypatch.setattr(cli.commands["samples"], "callback", lambda **kw: called.append(kw))
    assert parse(["samples", "--n", "2", "--out", str(tmp_path / "x")]) is None
    assert called == [] and not (tmp_path / "x").exists()


def test_readme_metadata_keys_are_the_contracts():
    """The README's list of metadata keys is core.contract.META_KEYS, in its order."""
    from sedeploy.core.contract import META_KEYS
    text = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"Every metadata value is JSON under the `sedeploy\.` prefix: ([^.]+)\.", text)
    assert m, "README: the metadata sentence is gone"
    assert [k.strip() for k in m.group(1).split(",")] == list(META_KEYS)


def test_readme_predictor_snippet_runs(fm_onnx, tmp_path, monkeypatch, capsys):
    """The README's Python example, as written, in a folder holding model.onnx and frog.png."""
    import shutil
    from PIL import Image
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    code = [b for b in blocks if "Predictor(" in b]
    assert len(code) == 1, "README: the Predictor example is gone"
    shutil.copy(fm_onnx, tmp_path / "model.onnx")
    Image.new("RGB", (48, 40), (30, 160, 60)).save(tmp_path / "frog.png")
    (tmp_path / "photos").mkdir()                                          # for examples that read a folder
    Image.new("L", (28, 28), 200).save(tmp_path / "photos" / "shirt.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code[0], "README.md (Predictor example)", "exec"), {})
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("frog.png [(") and first.count("', ") == 3     # 3 (label, prob) pairs


# ---------------------------------------------------------------- every command runs on tiny data
# Commands whose documented form already runs end to end (exit 0 on tiny data) in another file:
# the test named here must exist and call that command. The others run below, in this file.
END_TO_END: Dict[str, str] = {
    "train": "tests/test_cli_train.py::test_train_quick_json",
    "features": "tests/test_cli_train.py::test_features_png",
    "export": "tests/test_export.py::test_export_cli_and_force",
    "infer": "tests/test_runtime.py::test_infer_cli_heatmaps_and_json",
    "bench": "tests/test_bench.py::test_bench_rows_json_csv",
    "samples": "tests/test_runtime.py::test_samples_cli",
    "triton-repo": "tests/test_serve.py::test_triton_repo_cli",
    "bench-train": "tests/test_docs.py::test_bench_train_runs",
    "compare": "tests/test_docs.py::test_compare_runs",
    "faithfulness": "tests/test_docs.py::test_faithfulness_runs",
    "serve": "tests/test_docs.py::test_serve_starts_answers_and_stops",
    "formats": "tests/test_formats.py::test_formats_command_json_and_table",
}


def _calls_command(node: ast.AST, command: str) -> bool:
    """Whether a test function passes `command` as a string literal (run_cli("infer", ...))."""
    return any(isinstance(n, ast.Constant) and n.value == command for n in ast.walk(node))


def test_every_command_runs_somewhere():
    missing = sorted(set(cli.commands) - set(END_TO_END))
    assert not missing, f"no end-to-end run for: {', '.join(missing)}; add one to END_TO_END"
    assert not set(END_TO_END) - set(cli.commands), "END_TO_END names a command the CLI no longer has"
    bad = []
    for command, where in END_TO_END.items():
        file, _, name = where.partition("::")
        tree = ast.parse((ROOT / file).read_text())
        fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
        if not fn:
            bad.append(f"{command}: {where} does not exist")
        elif not _calls_command(fn[0], command):
            bad.append(f"{command}: {where} never runs `sedeploy {command}`")
    assert not bad, "\n".join(bad)


# The Makefile's demo on tiny data: its own argv, then options that make it small (click keeps an option's
# last value, so these override the demo's --epochs / --min-time and add the synthetic data folder).
EXPORT_TINY = ["--data-dir", "{data}", "--calib", "32", "--int8-eval", "50",
               "--int8-min-agreement", "0", "--int8-max-drop", "100"]   # a 1-epoch model: the gate is not the point
BENCH_TINY = ["--data-dir", "{data}", "--warmup", "1", "--min-time", "0.02", "--repeats", "1", "--limit", "64"]
# `make demo` then `make edge`, in order: (command, what the tiny run appends). The edge export's `--formats all`
# is narrowed to the fast formats (the last --formats wins): each format has its own end-to-end test.
DEMO_TINY = [
    ("train", ["--data-dir", "{data}", "--epochs", "1", "--limit-train", "200", "--limit-test", "100", "--no-progress"]),
    ("export", EXPORT_TINY),
    ("samples", ["--data-dir", "{data}"]),
    ("infer", []),
    ("bench", BENCH_TINY + ["--backends", "pytorch,ort-cpu,ort-cpu-int8"]),
    ("formats", []),
    ("export", EXPORT_TINY + ["--formats", "onnx,ort"]),
    ("infer", []),
    ("bench", BENCH_TINY + ["--backends", "ort-cpu,ort-format,ort-format-int8"]),
]


@pytest.mark.slow  # train + export (int8, fp16) + bench, twice: ~30-60 s on 2 shared cores
def test_makefile_demo_runs_on_tiny_data(run_cli, fmnist_dir, tmp_path, monkeypatch):
    """`make demo`'s sedeploy commands, in order, as the Makefile writes them (DEMO=demo), on tiny data."""
    steps = [a for w, _, a in doc_commands() if w.startswith("Makefile") and a[0] != "serve"]  # serve: above
    assert [a[0] for a in steps] == [c for c, _ in DEMO_TINY]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))        # --backend auto measures afresh
    for argv, (_, tiny) in zip(steps, DEMO_TINY):
        extra = [x.format(data=fmnist_dir) for x in tiny]
        r = run_cli(*argv, *extra)
        assert r.code == 0, f"{' '.join(argv)}: {r.err[-2000:]}"
    run = tmp_path / "demo" / "run"
    for f in ("best.pt", "curves.png", "model.onnx", "model.int8.onnx", "model.fp16.onnx", "model.ts", "export.json"):
        assert (run / f).is_file(), f
    assert len(list((tmp_path / "demo" / "images").glob("*.png"))) == 6
    assert len(list((tmp_path / "demo" / "heatmaps").glob("*_heatmap.png"))) == 6
    edge = json.loads((tmp_path / "demo" / "edge-bench.json").read_text())["rows"]
    assert {x["backend"] for x in edge if x["status"] == "ok"} == {"ort-cpu", "ort-format", "ort-format-int8"}
    rows = json.loads((tmp_path / "demo" / "bench.json").read_text())["rows"]
    assert {(x["backend"], x["batch"]) for x in rows} == {(b, n) for b in ("pytorch", "ort-cpu", "ort-cpu-int8")
                                                           for n in (1, 64)}
    assert all(x["status"] == "ok" for x in rows), [(x["backend"], x["status"]) for x in rows]
    assert (tmp_path / "demo" / "bench.csv").is_file()


def test_bench_train_runs(run_cli, fmnist_dir):
    """BENCHMARKS 2: `sedeploy bench-train --rgb`; README and BENCHMARKS 15: `bench-train --augment light` (tiny sizes, no
    compilation: the compiled rows are timed by test_bench_train_compiled_row, slow)."""
    r = run_cli("bench-train", "--rgb", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--batches", "2",
                "--batch-size", "8", "--workers", "0", "--device", "cpu", "--steps", "bf16", "--rounds", "2",
                "--parallel", "0", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    names = [x["pipeline"] for x in res["rows"]]
    bf16 = has_bf16()
    assert names == ["reference", "reference+cl", "fast"] + ["fast+bf16"] * bf16
    assert all(x["images_per_s"] > 0 and x["batches"] == 2 for x in res["rows"]), res["rows"]
    assert res["input"] == [3, 32, 32] and res["augment"] == "reference" and res["rounds"] == 2
    # the step's FLOPs as torch counts them: forward + backward ~ 3x the forward's 2 x MACs
    assert 40e6 < res["flops_per_image"] < 100e6
    assert res["gemm_gflops"]["fp32"] > 1 and 0 < res["breakdown"]["gemm_share"] < 1
    assert 0 < res["breakdown"]["data_share"] < 1 and all(x["warmup_s"] > 0 for x in res["rows"])
    for x in res["rows"]:
        assert x["gflops"] == pytest.approx(res["flops_per_image"] * x["images_per_s"] / 1e9)
        assert x["gemm_share"] == pytest.approx(x["gflops"] / res["gemm_gflops"][x["gemm_rate"]])
        assert x["sgemm_share"] == pytest.approx(x["gflops"] / res["gemm_gflops"]["fp32"])
    assert (not bf16) == any("bf16 rows skipped" in n for n in res["notes"])
    r = run_cli("bench-train", "--augment", "light", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir,
                "--batches", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--steps", "",
                "--rounds", "1", "--parallel", "0")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert [ln.split(":")[0].strip() for ln in lines[:3]] == ["reference", "reference+cl", "fast"]
    assert lines[3].startswith("breakdown (fast, fp32, eager):") and lines[-1].startswith("speed-up:")
    assert "data path" in lines[3] and "warm-up" in lines[2]
    r = run_cli("bench-train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--steps", "fp8")
    assert_one_line_error(r, "unknown step configuration fp8", "compile, bf16, compile+bf16")


@pytest.mark.slow  # compilations of the training step and spawned processes (~1-2 min on 2 cores)
def test_bench_train_compiled_and_parallel_rows(run_cli, fmnist_dir):
    r = run_cli("bench-train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--batches", "2",
                "--batch-size", "8", "--workers", "0", "--device", "cpu", "--steps", "compile", "--rounds", "1",
                "--parallel", "2", "--json")
    assert r.code == 0, r.err
    rows = {x["pipeline"]: x for x in json.loads(r.out)["rows"]}
    assert set(rows) == {"reference", "reference+cl", "fast", "fast+compile", "fast x2", "fast+compile x2"}
    assert all(x["images_per_s"] > 0 for x in rows.values()), rows
    assert len(rows["fast x2"]["per_process"]) == 2 and len(rows["fast+compile x2"]["per_process"]) == 2
    assert rows["fast x2"]["images_per_s"] == pytest.approx(sum(rows["fast x2"]["per_process"]))
    assert "No CUDA runtime is found" not in r.err           # inductor's C++ build on a CPU-only machine: quiet


def test_bench_train_too_few_images_is_one_line(run_cli, fmnist_dir):
    r = run_cli("bench-train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--batches", "100",
                "--batch-size", "64", "--device", "cpu")
    assert_one_line_error(r, "fewer than the 6720", "lower --batches")


@pytest.mark.slow  # 4 tiny trainings with plots: ~15-30 s on 2 shared cores
def test_compare_runs(run_cli, fmnist_dir, tmp_path):
    """`sedeploy compare --dataset fashion-mnist --epochs 1 --limit-train 2000 --seeds 0,1 --json`, smaller."""
    r = run_cli("compare", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--epochs", "1",
                "--limit-train", "200", "--limit-test", "100", "--seeds", "0,1", "--out", tmp_path, "--no-progress",
                "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)                                  # stdout is the JSON alone
    assert all((tmp_path / f"comparison.{ext}").exists() for ext in ("md", "json", "png"))   # as the README says
    for seed in (0, 1):
        for m in ("cnn", "se_cnn"):
            assert (tmp_path / f"seed{seed}" / m / "best.pt").exists()
    assert json.loads((tmp_path / "comparison.json").read_text()) == res


def test_faithfulness_runs(run_cli, fm_onnx, fmnist_dir, trained_fm):
    """`sedeploy faithfulness --model runs/fm/model.onnx --n 1000`, on 10 images (no best.pt beside it: no
    Grad-CAM, said on stderr); with --ckpt, Grad-CAM's row and its paired columns."""
    r = run_cli("faithfulness", "--model", fm_onnx, "--data-dir", fmnist_dir, "--n", "10", "--steps", "4", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["images"] == 10 and {"head-cam", "se", "random"} <= set(res["methods"]) and "Grad-CAM" in r.err
    r = run_cli("faithfulness", "--model", fm_onnx, "--data-dir", fmnist_dir, "--n", "6", "--steps", "2")
    assert r.code == 0 and "| random |" in r.out, r.err
    r = run_cli("faithfulness", "--model", fm_onnx, "--ckpt", trained_fm / "best.pt", "--data-dir", fmnist_dir,
                "--n", "6", "--steps", "2", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert "gradcam" in res["methods"] and "Grad-CAM" not in r.err
    assert {"vs_gradcam", "vs_spatial-mean"} <= set(res["paired"]["head-cam"])


def test_serve_starts_answers_and_stops(fm_onnx):
    """`sedeploy serve --model fm=runs/fm/model.onnx`, on 127.0.0.1 port 0: ready, answers, SIGTERM exits 0."""
    pytest.importorskip("uvicorn")
    import urllib.request
    from support.launch import ServerProcess
    with ServerProcess(["--model", f"fm={fm_onnx}", "--host", "127.0.0.1", "--port", "0"], timeout=60) as srv:
        with urllib.request.urlopen(srv.url + "/v2/health/ready", timeout=10) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(srv.url + "/v2/models/fm", timeout=10) as resp:
            meta = json.loads(resp.read())
        assert meta["inputs"][0]["shape"] == [-1, 1, 32, 32] and meta["outputs"][0]["name"] == "logits"
        assert srv.stop(timeout=30) == 0, "\n".join(srv.lines[-10:])
    assert "serve" in srv.proc.args


def test_repository_config_wins_over_serve_options(fm_onnx, tmp_path, run_cli):
    """README (Triton hand-over): a config.pbtxt's batching is served as written; --max-batch/--max-delay-ms
    apply to folders without one; --max-queue bounds a queue the config leaves unset."""
    from sedeploy.cli import _serve_specs
    from sedeploy.serve.model import ServedModel
    repo = tmp_path / "repo"
    assert run_cli("triton-repo", fm_onnx, "--out", repo, "--name", "fm", "--max-batch", "4",
                   "--max-delay-us", "2000").code == 0
    assert run_cli("triton-repo", fm_onnx, "--out", repo, "--name", "plain").code == 0
    (repo / "plain" / "config.pbtxt").unlink()                             # Triton derives it from the model
    cfg = (repo / "fm" / "config.pbtxt").read_text()
    (repo / "fm" / "config.pbtxt").write_text(re.sub(r"default_queue_policy\s*\{[^}]*\}", "", cfg))
    specs = _serve_specs([], str(repo), max_batch=16, max_delay_ms=7.0, max_queue=9, batching=True)
    got = {}
    for s in specs:
        m = ServedModel(s, "cpu", 1)
        m.load()
        b = m.make_batcher()
        got[s.name] = (m.max_batch_size, b.max_batch, b.max_delay_s, b.max_queue)
    assert got["fm"] == (4, 4, 0.002, 9)                                   # the config's; the queue is --max-queue
    assert got["plain"] == (16, 16, 0.007, 9)                              # no config: every option
