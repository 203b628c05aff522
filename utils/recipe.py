"""The authors' recipe, in one place: every entry point takes its defaults from here.

train.py, evaluate.py and parse_images.py use these as their flags' defaults; run.sh and
run_evaluate.sh pass a flag only when its environment variable is set, so they inherit them;
the loader and bench/ read them too. docs/reference.md sections 6 and 7 say where each value
comes from. Where the authors' own files disagree, the value they trained and evaluated with
wins: their train.py parser says 473x473 crops, their run.sh, which produced the published
model, passes 384x384 (docs/differences.md).

The classes are not here: they are the label set's (utils/labels.py; the Dog set by default).
No imports: the shell scripts read this module without loading torch.
"""

from __future__ import annotations

# Each value says where it comes from: "authors" = their run.sh / train.py / loader as
# docs/reference.md describes them (the section named), "ours" = a choice of this repository.
# fmt: off
DATA_DIR = "./dataset/Cartoon_sketches/Dog/"              # authors, s. 6
INPUT_SIZE = (384, 384)                                   # authors' run.sh, s. 6 (their parser: 473)
BATCH_SIZE = 12                                           # authors, s. 6: per process under torchrun
LEARNING_RATE = 1e-3                                      # authors, s. 6: base LR of the poly schedule
MOMENTUM = 0.9                                            # authors, s. 6: SGD
WEIGHT_DECAY = 5e-4                                       # authors, s. 6: SGD, L2
POWER = 0.9                                               # authors, s. 6: poly exponent
EPOCHS = 500                                              # authors, s. 6
SNAPSHOT_EVERY = 99                                       # authors, s. 6: DFPnet_epoch_<e>.pth, e % 99 == 0
IMAGENET_WEIGHTS = "./Trained_Models/resnet101-imagenet.pth"  # authors, s. 6
SNAPSHOT_DIR = "./snapshots"                              # authors, s. 6
EVAL_SPLIT = "val"                                        # authors' run_evaluate.sh, s. 7
EVAL_CHECKPOINT = "./snapshots/DFPnet_epoch_495.pth"      # authors, s. 7: their released model
RANDOM_SEED = 1234                                        # ours: --random-seed's default
DEMO_DATA_DIR = "./dataset/Cartoon_sketches/Synthetic/"   # ours: run.sh's generated demo set

# The training run's cadence.
LOG_EVERY = 100                                           # authors, s. 6: loss, learning_rate; iterations
IMAGE_EVERY = 500                                         # authors, s. 6: image grids; iterations
SAVE_NUM_IMAGES = 2                                       # authors' --save-num-images: images per grid
EVAL_EVERY = 5                                            # authors, s. 6: val and trainTest, every N epochs,
EVAL_EVERY_LATE = 20                                      # authors, s. 6: ... every N from EVAL_LATE_FROM on
EVAL_LATE_FROM = 500                                      # authors, s. 6
VAL_DATASETS = ("val", "trainTest")                       # authors, s. 6: the splits evaluated in training
SAVE_EVERY = 500                                          # ours: last.pth every N iterations, and each epoch
WORKERS = 2                                               # ours: DataLoader workers per process
EVAL_WORKERS = 2                                          # ours: at most this many for evaluation in training
TIMING_STEPS = 5                                          # ours: steps --time-budget times (2 are warm-up)
EXIT_SECONDS = 1.0                                        # ours: --time-budget keeps for the process's exit
TUNE_WARMUP = 2                                           # ours: --tune: unmeasured steps per configuration
TUNE_STEPS = 3                                            # ours: --tune: measured steps (their median counts)
TUNE_START_STEPS = 3                                      # ours: --tune: a fresh process's start, in steps
TUNE_TIE = 0.05                                           # ours: --tune: step times this close are a tie
TUNE_MAX_SHARE = 0.01                                     # ours: --tune auto measures under 1 % of the run
ONNX_OPSET = 18                                           # ours: export.py; what the exporter writes natively
CALIBRATION_IMAGES = 300                                  # ours: export.py --precision int8 (RESULTS s. 15)

# Augmentation of the training splits, the authors' loader (s. 3.3): scale 1 +- 0.25, rotation
# +- 30 degrees for 60 % of the samples, horizontal flip half of the time.
SCALE_FACTOR = 0.25
ROTATION_FACTOR = 30.0
ROTATION_PROB = 0.6
FLIP_PROB = 0.5
# fmt: on


if __name__ == "__main__":  # `python -m utils.recipe NAME`: one value, for the shell scripts
    import sys

    value = globals()[sys.argv[1]]
    print(",".join(map(str, value)) if isinstance(value, tuple) else value)
