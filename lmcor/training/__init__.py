"""The T5X-style trainer's parts: the model families and the protocol they follow, train state +
optimizers, the sharded step, Orbax checkpoints, deterministic batches, evaluation and logging.
`lmcor.train` wires them with Gin."""
