"""One module per trainer kind; each registers its :class:`~mlops_trainers.trainer.Trainer`."""
