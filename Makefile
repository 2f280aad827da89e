# Two commands: `make demo` and `make test` (and `make serve` to browse what the demo made). Each sets everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out
# torch==2.13.0: here a CPU wheel is cached and pip finds it. Elsewhere, to avoid gigabytes of CUDA:
#   make test PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_EXTRA ?=
# chromium: the headless browser of tests/test_serve_browser.py (folkrnn serve's pages)
DEB_PACKAGES := abcm2ps abcmidi ghostscript poppler-utils fluidsynth fluid-soundfont-gm chromium
DEB_COMMANDS := abcm2ps abc2midi gs pdftotext fluidsynth chromium
DEB_FILES    := /usr/share/sounds/sf2/FluidR3_GM.sf2

.PHONY: setup sysdeps test demo serve demo-model bench lint clean

setup: $(BIN)/.installed sysdeps

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_EXTRA) "torch==2.13.0"
	@# setuptools prints a banner about editable installs on stderr: kept in a log, shown on failure
	$(BIN)/python -m pip install -q $(PIP_EXTRA) -e ".[test]" 2> $(VENV)/install.log || (cat $(VENV)/install.log; exit 1)
	@touch $@

# The Debian tools that typeset and play tunes (and the General MIDI soundfont that
# `folkrnn play` renders with): installed when missing and we are root.
sysdeps:
	@missing=""; for c in $(DEB_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	for f in $(DEB_FILES); do test -f $$f || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $(DEB_PACKAGES)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PACKAGES)) >/dev/null || exit 1; \
	  else \
	    echo "missing commands or files:$$missing. Install them with: sudo apt-get install $(DEB_PACKAGES)"; exit 1; \
	  fi; \
	fi

# The dataflow extra (apache-beam[gcp]: the DataflowRunner and the GCS filesystem), which
# tests/test_dataflow.py needs to translate the pipelines for Dataflow. Tests only: `make demo`
# does without it. Measured on a fresh venv: 50-70 s (70 s with no pip cache) and 340 MB more (83 packages).
$(BIN)/.dataflow: $(BIN)/.installed
	$(BIN)/python -m pip install -q $(PIP_EXTRA) -e ".[test,dataflow]" 2> $(VENV)/install.log || (cat $(VENV)/install.log; exit 1)
	@touch $@

# One pytest worker per core (pytest-xdist), each test file whole on one worker so that a file's
# shared fixtures are built once. `make test PYTEST_ARGS=` runs them all in one process.
PYTEST_ARGS ?= -n auto --dist loadfile
test: setup $(BIN)/.dataflow
	$(BIN)/ruff check pipeline transforms model schemas tests benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/folkrnn demo --out $(OUT)

# The local web page over what `make demo` made: http://127.0.0.1:8000/
serve: setup
	$(BIN)/folkrnn serve $(OUT)/compiled/corpus $(OUT)/generated

# The dance-tune demo model (model/demo.pt), the recipe of model/MODEL.md, about 30 min on one CPU core:
# 1. fine-tune the base model (model/base.pt) on the dance collections' tunes with repeated parts;
# 2, 3. sample 4,000 tunes from it --well-formed (valid by construction, in its own style), then one
#    more epoch on the dance tunes plus those samples: the model learns what the grammar corrected in
#    its own tunes, and writes valid tunes without the grammar's help too;
# 4, 5. the same again from the model of step 3.
DANCE_TUNES := collection IN ('oneills1850','ryansMammoth','airdsAirs') AND form LIKE 'AABB%'
DANCE_NAME  := folkrnn session demo: 3x256 LSTM, dance tunes
DANCE_RUN   := $(OUT)/demo-model
# $(call distill,FROM,SAMPLES,SEED,TO): sample FROM's best checkpoint well-formed, train one epoch from it
define distill
	$(BIN)/folkrnn generate $(DANCE_RUN)/$(1)/checkpoints/best.pt --num-tunes 4000 --seed $(3) --well-formed \
	    --quiet --out $(DANCE_RUN)/$(2)
	$(BIN)/folkrnn validate $(DANCE_RUN)/$(2)
	$(BIN)/folkrnn train $(OUT)/ingest --init $(DANCE_RUN)/$(1)/checkpoints/best.pt --only-valid \
	    --where "$(DANCE_TUNES)" --add-tunes $(DANCE_RUN)/$(2) \
	    --lr 0.001 --dropout 0.3 --max-epochs 1 --seed 42 --threads 1 --quiet \
	    --name "$(DANCE_NAME)" --out $(DANCE_RUN)/$(4)
endef
demo-model: setup
	test -d $(OUT)/ingest/tunes || $(BIN)/folkrnn ingest --out $(OUT)/ingest
	rm -rf $(DANCE_RUN)
	$(BIN)/folkrnn train $(OUT)/ingest --init model/base.pt --only-valid --where "$(DANCE_TUNES)" \
	    --lr 0.002 --dropout 0.3 --max-epochs 8 --seed 42 --threads 1 --quiet \
	    --name "$(DANCE_NAME)" --out $(DANCE_RUN)/1-dance
	$(call distill,1-dance,2-samples,7,3-dance-and-samples)
	$(call distill,3-dance-and-samples,4-samples,8,5-dance-and-samples)
	$(BIN)/python -c "from folkrnn.model.checkpoint import export_checkpoint as e; \
	    e('$(DANCE_RUN)/5-dance-and-samples/checkpoints/best.pt', 'model/demo.pt')"

bench: setup
	$(BIN)/python -m benchmarks.run

lint: setup
	$(BIN)/ruff check pipeline transforms model schemas tests benchmarks

clean:
	rm -rf $(OUT) .pytest_cache
