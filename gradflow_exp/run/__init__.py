"""One job: its run directories taken, its runs built, trained together and written
(job.py → rundir.py, build.py, batch.py → training/loop.py → sinks.py)."""
