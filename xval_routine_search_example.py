"""An xval routine that searches: copy it per experiment, edit the space, run it (needs requirements-search.txt).

    python3 xval_routine_search_example.py            # the hand-written instance 1, then the search's 8 trials
    python3 xval_routine_search_example.py 10         # the search only
    python3 xval_routine_search_example.py 10 10 -1,-1  # two CPU workers, each asking for the next trial
    python3 xval_routine_search_example.py --slurm    # the trials as SLURM array tasks sharing the search's journal
    python3 xval_routine_search_example.py --status   # the trials by state, and each one's folds

A search is an experiment_dict entry whose strings give distributions instead of values: uniform(LOW, HIGH),
loguniform(LOW, HIGH), intrange(LOW, HIGH, step=STEP), choice(A, B, ...), and its settings: search_trials,
search_sampler ("tpe", "random", "grid"), search_seed, search_pruner ("median", "halving", "none"),
search_startup_trials. Trial t is instance 10 + t, cross-validated on the same actor folds as instance 1; a trial
worse than the others at a fold is pruned there. The spreadsheet's "search 10" sheet says which number to report.
"""
import xval_instance

description = """Demo search: learning rate and L2 strength of the example CNN on the synthetic RAVDESS-format corpus,
8 trials (TPE, median pruner) on the actor folds, beside the hand-picked defaults of instance 1."""
gpu_ID = 0                    # CUDA device of the folds (-1: CPU; [0, 1]: a worker each); the command line may override
dataset = "ravdess_demo"      # features name: {features_folder}/{dataset}_predictors.npz (preprocessing_ravdess.py)
num_experiment = 2            # results go to {experiment_folder}/experiment_{num_experiment}/
num_folds = 4                 # k of the speaker-independent k-fold cross-validation over actors
experiment_folder = None      # None: config.ini [paths] experiment_folder
overwrite_results = False     # False: finished instances and trials are kept, a killed search resumes
debug_mode = False            # True: stop at the first failure and show its traceback

experiment_dict = {}
experiment_dict[1] = ['task_type = "classification"', 'architecture = "EXAMPLE_model"',
                      'comment_1 = "hand-picked"', 'comment_2 = "EXAMPLE_architecture"',
                      'regularization_lambda = 0.001', 'learning_rate = 0.003', 'num_epochs = 10']
experiment_dict[10] = ['task_type = "classification"', 'architecture = "EXAMPLE_model"',
                       'comment_1 = "searched"', 'comment_2 = "EXAMPLE_architecture"', 'num_epochs = 10',
                       'learning_rate = loguniform(5e-4, 1e-2)',
                       'regularization_lambda = choice(0.0001, 0.001, 0.01)',
                       'search_trials = 8', 'search_sampler = "tpe"', 'search_seed = 0',
                       'search_pruner = "median"', 'search_startup_trials = 3']

xval_instance.run_routine(description=description, gpu_ID=gpu_ID, dataset=dataset, num_experiment=num_experiment,
                          num_folds=num_folds, experiment_folder=experiment_folder,
                          overwrite_results=overwrite_results, debug_mode=debug_mode, experiment_dict=experiment_dict)
