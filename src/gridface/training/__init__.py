"""What the train stage needs around the LightningModule: where a run resumes from (:mod:`.resume`), how its
processes are launched (:mod:`.launch`: Slurm plugins, the DDP-in-a-sweep guard), and the checkpoint it writes
when a scheduler preempts it (:mod:`.preemption`)."""
