"""Training: the T5X-style trainer behind `lmcor train` (lmcor.cli.train_command wires it with
Gin).

  * `protocol`     - `TrainModel`: what the trainer, validation and MODEL_DIR loading call;
  * `builders`     - the Gin builders of the T5.1.1 and Gemma 3 models that follow it;
  * `peft`         - LoRA adapters, frozen layers and what trains;
  * `frozen_cache` - a frozen bottom stack's output, computed once per row;
  * `seqio_data`   - training rows from SeqIO tasks, through the feature converters;
  * `batches`      - deterministic, resumable batches keyed by step;
  * `state`        - train state, optimizers and schedules;
  * `step`         - the loss and the jitted, sharded train step;
  * `validation`   - validation during training: decode the hold-out and score it;
  * `budget`       - budgets in examples, and the record of evaluations;
  * `checkpointing` - Orbax saves (latest and best) and preemption;
  * `logging`      - TensorBoard scalars and the progress bar;
  * `loop`         - the loop that runs them, resumable from any checkpoint.
"""
