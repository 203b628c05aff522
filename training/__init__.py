"""Training: the loop and its schedule, the training state and snapshots, stop signals and the folder
lock, torchrun's processes, the loss and the run's configuration. train.py is its command line.

The top layer of docs/design.md below the scripts: it may import ``inference`` (evaluation during
training), ``dataset``, ``utils``, ``networks`` and ``libs``, never a script.
"""

PROG = "train.py"  # how the training messages name themselves
