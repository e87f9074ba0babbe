"""What every task shares and none owns, one job per module.

- `files`: atomic writes (a temporary name, then a rename);
- `doc_sections`: measured tables written into the docs between markers;
- `errors`: the neutral errors the library raises (`InputError`, ...);
- `strategy`: the `tf.distribute` strategy, precision and XLA;
- `statistics`: dataset statistics (ImageNet's), the one normalisation,
  (x - mean) / std, and the mean and spread of several runs' figures;
- `images`: which files are images;
- `recipe`: `Recipe`, the optimization settings of a run;
- `run_config`: the run folder's files and its typed `config.json`
  (`RunConfig`, `Preprocessing`), read by training, resuming and export;
- `ownership`, `run_lock`: which folders are run folders, what a run may
  remove there, and the lock that lets one process write a run folder;
- `tensorflow_logs`: quieting TensorFlow's warnings where the library
  reports the failure itself.

Nothing here imports the trainer, a task, the hub or the export package.
"""
