"""Training (stable-baselines3 + MLflow) and the evaluation harness."""
