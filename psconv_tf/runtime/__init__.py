"""What every task shares and none owns: atomic files, errors, distribution
strategy and precision, and the run folder's ownership and lock.

Nothing here imports the trainer, a task, the hub or the export package.
"""
