# gazegen: `make demo` sets up and runs the demo end to end; `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO ?= demo_out
DEMO_STEPS ?= 150

.PHONY: setup test demo clean

$(BIN)/gazegen: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/gazegen

setup: $(BIN)/gazegen

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/gazegen data synth-heads $(DEMO)/heads --subjects 6 --resolution 128 --views 9 --gazes 64 \
		--set test_subjects=1 --set rig.max_yaw_deg=30 --set rig.max_pitch_deg=20 --overwrite  # the last demo's, remade
	$(BIN)/gazegen data inspect $(DEMO)/heads --sheet $(DEMO)/heads_sheet.png
	rm -rf $(DEMO)/run $(DEMO)/synth  # a fresh run each time; the heads are remade identically
	@echo "demo: fine-tuning the shipped LiveGaze weights/demo-livegaze (its MODEL_CARD.md; made from weights/demo-prior) on these heads"
	$(BIN)/gazegen train --config configs/train/demo.toml --data $(DEMO)/heads --out $(DEMO)/run --max-steps $(DEMO_STEPS)
	$(BIN)/gazegen synthesize $(DEMO)/run/checkpoints/step_$(shell printf %07d $(DEMO_STEPS)) $(DEMO)/heads/test $(DEMO)/synth \
		--config configs/synth/demo.toml --sample 2
	$(BIN)/gazegen data sheet $(DEMO)/synth $(DEMO)/synth_sheet.png
	@echo "demo: heads contact sheet $(DEMO)/heads_sheet.png; training run $(DEMO)/run: loss curve $(DEMO)/run/loss_curve.png,"
	@echo "      validation grid (source, target, prediction, depth) $(DEMO)/run/val/step_$(shell printf %07d $(DEMO_STEPS)).png;"
	@echo "      synthesised Parquet shards $(DEMO)/synth (README.md is the dataset card, with its label histograms"
	@echo "      $(DEMO)/synth/label_histograms.png), read back: $(DEMO)/synth_sheet.png and $(DEMO)/synth_sheet_labels.png"
	@echo "demo: does the synthesised data help a gaze estimator on unseen people? (not run here; about 5 min on 2 cores):"
	@echo "      $(BIN)/python benchmarks/downstream.py --checkpoint $(DEMO)/run --out $(DEMO)/downstream"
	@echo "      export the shards for ETH-XGaze / GazeHub trainers: $(BIN)/gazegen export $(DEMO)/synth DEST --format xgaze|gazehub"
	@echo "demo: redirection benchmark of the held-out subject (benchmarks/redirection.py), judged by the reference"
	@echo "      estimator weights/demo-estimator (shipped; its MODEL_CARD.md says how it was made);"
	@echo "      rows: the model, copy-the-source, a perfect render at the neural side, the ground truth, the constant;"
	@echo "      then the gaze sweep ($(DEMO)/redirection/sweep.png) and the swap test; the last line is the verdict"
	$(BIN)/python benchmarks/redirection.py --store $(DEMO)/heads --estimator weights/demo-estimator --out $(DEMO)/redirection \
		--checkpoint $(DEMO)/run/checkpoints/step_$(shell printf %07d $(DEMO_STEPS))

clean:
	rm -rf $(DEMO) .pytest_cache
