"""Shared core of the monorepo: config schemas, the training loop, checkpoints, logging, data roots,
benchmark helpers and the reproduce framework. Importable without Hydra."""
