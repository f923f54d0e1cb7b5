"""An xval routine: copy this file per experiment (xval_routine_exp1.py), edit the settings, run it.

    python3 xval_routine_exp1.py            # every instance, on gpu_ID below
    python3 xval_routine_exp1.py 3 7 1      # instances 3 to 7 on GPU 1
    python3 xval_routine_exp1.py 4          # instance 4 only
    python3 xval_routine_exp1.py 1 20 0,1   # folds in parallel on GPUs 0 and 1 (-1,-1: two CPU workers)
    python3 xval_routine_exp1.py --slurm    # every missing fold job as a SLURM array task ([slurm] in config.ini)
    python3 xval_routine_exp1.py --status   # each fold job: done, running, failed or pending

Each instance is a list of parameter strings applied over the defaults (config.ini [training] plus the keyword
defaults of the architecture in define_models.py). A typo, an unknown name or a wrong type stops the run before
anything is trained. Results: {experiment_folder}/experiment_{num_experiment}/ and its spreadsheet.
"""
import xval_instance

description = """Demo: emotion classification on the synthetic RAVDESS-format corpus (log-mel features).
Compares the example CNN with two L2 strengths and a pooled-statistics MLP, on identical actor folds."""
gpu_ID = 0                    # CUDA device of the folds (-1: CPU; [0, 1]: a worker each); the command line may override
dataset = "ravdess_demo"      # features name: {features_folder}/{dataset}_predictors.npz (preprocessing_ravdess.py)
num_experiment = 1            # results go to {experiment_folder}/experiment_{num_experiment}/
num_folds = 4                 # k of the speaker-independent k-fold cross-validation over actors
experiment_folder = None      # None: config.ini [paths] experiment_folder
overwrite_results = False     # False: finished instances are skipped, unfinished ones resume
debug_mode = False            # True: stop at the first failure and show its traceback

experiment_dict = {}
experiment_dict[1] = ['task_type = "classification"', 'architecture = "EXAMPLE_model"',
                      'comment_1 = "reg base 0.001"', 'comment_2 = "EXAMPLE_architecture"',
                      'regularization_lambda = 0.001', 'learning_rate = 0.003', 'num_epochs = 15']
experiment_dict[2] = ['task_type = "classification"', 'architecture = "EXAMPLE_model"',
                      'comment_1 = "reg strong 0.01"', 'comment_2 = "EXAMPLE_architecture"',
                      'regularization_lambda = 0.01', 'learning_rate = 0.003', 'num_epochs = 15']
experiment_dict[3] = ['task_type = "classification"', 'architecture = "POOLED_STATS_model"',
                      'comment_1 = "reg base 0.001"', 'comment_2 = "pooled statistics MLP"',
                      'regularization_lambda = 0.001', 'num_epochs = 30', 'patience = 6',
                      'learning_rate = 0.002']

xval_instance.run_routine(description=description, gpu_ID=gpu_ID, dataset=dataset, num_experiment=num_experiment,
                          num_folds=num_folds, experiment_folder=experiment_folder,
                          overwrite_results=overwrite_results, debug_mode=debug_mode, experiment_dict=experiment_dict)
