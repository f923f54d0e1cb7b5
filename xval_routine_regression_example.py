"""An xval routine with regression instances: predict RAVDESS intensity (0 normal, 1 strong) per clip.

Needs the intensity features first:  python3 preprocessing_ravdess.py --demo --target intensity
Then:                                python3 xval_routine_regression_example.py [FIRST [LAST [DEVICES]]]
"""
import xval_instance

description = """Demo: intensity regression (0 normal, 1 strong) on the synthetic RAVDESS-format corpus.
The CNN against the pooled-statistics MLP; best model chosen on validation RMSE."""
gpu_ID = 0
dataset = "ravdess_demo_intensity"
num_experiment = 2
num_folds = 4
experiment_folder = None
overwrite_results = False
debug_mode = False

experiment_dict = {}
experiment_dict[1] = ['task_type = "regression"', 'architecture = "EXAMPLE_model"',
                      'comment_1 = "reg base 0.001"', 'comment_2 = "EXAMPLE_architecture"',
                      'regularization_lambda = 0.001', 'learning_rate = 0.003', 'num_epochs = 15',
                      'save_best_model_metric = "val_rmse"']
experiment_dict[2] = ['task_type = "regression"', 'architecture = "POOLED_STATS_model"',
                      'comment_1 = "reg base 0.001"', 'comment_2 = "pooled statistics MLP"',
                      'regularization_lambda = 0.001', 'num_epochs = 30', 'patience = 6',
                      'save_best_model_metric = "val_rmse"']

xval_instance.run_routine(description=description, gpu_ID=gpu_ID, dataset=dataset, num_experiment=num_experiment,
                          num_folds=num_folds, experiment_folder=experiment_folder,
                          overwrite_results=overwrite_results, debug_mode=debug_mode, experiment_dict=experiment_dict)
