"""`python -m backend.evaluate` (README): forwards to backend.evaluation.evaluate, where the evaluation lives."""

from backend.evaluation.evaluate import main

if __name__ == "__main__":
    main()
