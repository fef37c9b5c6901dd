# sedeploy: the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SEDEPLOY := $(VENV)/bin/sedeploy
DEMO ?= demo
FMNIST := /usr/share/datasets/fashion-mnist
# The torch/torchvision pair that imports together on these machines (see README).
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: install dataset browser arm64 edge demo test test-slow test-all test-gpu lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing into $(VENV): torch pair first (~70 s, ~5.5 GB), then sedeploy[full,serve,dev]"
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq $(TORCH_PIN)
	$(PY) -m pip install -qq -e '.[full,serve,dev,ncnn,openvino,coreml,executorch]'
	$(PY) -m pip install -qq --no-deps pnnx    # ncnn's converter: a binary; its torch requirement is unused
	$(PY) -m pip install -qq $(TORCH_PIN) -e '.[tflite]'   # LiteRT: apart, its xdsl pins typing-extensions<4.13
	$(PY) -m pip install -qq 'typing_extensions>=4.15'   # selenium's floor back (litert-torch converts with 4.16)
	touch $@

# Fashion-MNIST from Debian's package (real data, offline).
dataset:
	@if [ -f $(FMNIST)/t10k-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST present in $(FMNIST)"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; }; fi

# Debian's chromium and its chromedriver, for the tests of the `sedeploy serve` page and of the web bundle in a
# real browser, and npm, which fetches onnxruntime-web for `export --formats web` (without them those tests are
# skipped, saying so).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v npm >/dev/null; then \
	  echo "chromium, chromedriver and npm present"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq chromium chromium-driver npm >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver npm; }; fi

# qemu user-mode emulation and mmdebstrap, for the test that runs the runtime on linux/arm64 against x86
# (tests/test_arm64.py; without them it is skipped, saying so). The test unpacks Debian's arm64 python3.11
# from the mirror in the host's apt sources and the aarch64 wheels into ~/.cache/sedeploy-arm64 once.
arm64:
	@if command -v qemu-aarch64-static >/dev/null && command -v mmdebstrap >/dev/null; then echo "qemu-aarch64-static and mmdebstrap present"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq qemu-user-static mmdebstrap >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq qemu-user-static mmdebstrap; }; fi

# The main job end to end on real data (Fashion-MNIST, CPU, a few minutes):
# train -> export (+ int8, fp16; parity table) -> infer with heatmaps on real test images -> bench.
demo: install dataset
	$(SEDEPLOY) train --dataset fashion-mnist --model se_cnn --epochs 2 --limit-train 20000 --out $(DEMO)/run
	$(SEDEPLOY) export --ckpt $(DEMO)/run/best.pt --formats onnx,torchscript,ort --int8 --half --force
	$(SEDEPLOY) samples --n 6 --out $(DEMO)/images
	$(SEDEPLOY) infer $(DEMO)/images --model $(DEMO)/run/model.onnx --topk 3 --heatmaps $(DEMO)/heatmaps
	$(SEDEPLOY) bench --model $(DEMO)/run/model.onnx --batch-sizes 1,64 --min-time 0.5 \
	  --save-json $(DEMO)/bench.json --save-csv $(DEMO)/bench.csv
	$(MAKE) --no-print-directory edge
	@echo
	@echo "demo done. Look at:"
	@echo "  $(DEMO)/run/curves.png, $(DEMO)/run/loss_iterations.png   training curves"
	@echo "  $(DEMO)/run/model.onnx (+ .int8.onnx, .fp16.onnx, model.ts, model.ort, model.int8.ort, export.json)   exports"
	@echo "  $(DEMO)/heatmaps/*_heatmap.png, *_channels.png, *_se.png   attention heatmaps"
	@echo "  $(DEMO)/bench.json, $(DEMO)/bench.csv                      benchmark table"
	@echo "  $(DEMO)/edge/ (every format: export.json has each one's parity per output), $(DEMO)/edge-bench.json"
	@echo "serve it (Open Inference Protocol + page at http://127.0.0.1:8000/): $(SEDEPLOY) serve --model $(DEMO)/run/model.onnx"

# The demo model in every format whose converter is installed (issue 15), each verified in its own runtime
# on every output (Core ML: validated, "not verified: needs macOS"), int8 where the format has a real int8
# path (gated); then the fastest verified file here (--backend auto) and a bench row per file.
edge: install
	$(SEDEPLOY) formats
	$(SEDEPLOY) export --ckpt $(DEMO)/run/best.pt --formats all --int8 --out $(DEMO)/edge --force
	$(SEDEPLOY) infer $(DEMO)/images --model $(DEMO)/edge --backend auto --batch-size 1 --topk 1
	$(SEDEPLOY) bench --model $(DEMO)/edge --batch-sizes 1,64 --min-time 0.5 --limit 2000 \
	  --save-json $(DEMO)/edge-bench.json
	$(PY) scripts/edge_table.py $(DEMO)/edge $(DEMO)/edge-bench.json

# The suite without the tests marked slow (5-6 min on 2 cores; test-slow ~8 min); test-slow: those (the LiteRT and ExecuTorch format tests, int8 of each format,
# arm64 emulation, multi-process training, the demo's commands, real Triton, the browser bundle); CI runs both.
test: install
	$(VENV)/bin/pytest -q -m "not slow"

test-slow: install
	$(VENV)/bin/pytest -q -m slow

test-all: install
	$(VENV)/bin/pytest -q

# the CUDA tests alone (skipped, with the reason, without a GPU). On a machine whose Python already has
# torch + onnxruntime-gpu (no registry): make test-gpu SKIP_INSTALL=1 PYTEST="python3 -m pytest"
PYTEST ?= $(VENV)/bin/pytest
test-gpu: $(if $(SKIP_INSTALL),,install)
	$(PYTEST) -q -rs -m gpu

lint: install
	$(PY) -m pip install -qq ruff
	$(VENV)/bin/ruff check --select F,E9 src tests scripts

clean:
	rm -rf $(DEMO) runs .pytest_cache
