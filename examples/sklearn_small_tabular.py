"""FeedbackAlignmentClassifier as a drop-in for MLPClassifier on small tabular data (the README's table).

Each data set is split once (train_test_split, random_state=0, stratified), scaled by a
StandardScaler in the pipeline, and every estimator keeps its defaults except ``rule`` and
``max_iter`` (20 epochs, and the default 200 with both libraries' stopping rule). Prints test accuracy.

    python examples/sklearn_small_tabular.py
"""

import warnings

from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pyjlfa.sklearn import FeedbackAlignmentClassifier

DATA = {"digits": load_digits, "breast_cancer": load_breast_cancer, "wine": load_wine}
ESTIMATORS = {"MLPClassifier": lambda **kw: MLPClassifier(random_state=0, **kw)}
ESTIMATORS.update({f"FeedbackAlignmentClassifier {rule}":
                   (lambda rule: lambda **kw: FeedbackAlignmentClassifier(rule=rule, random_state=0, **kw))(rule)
                   for rule in ("bp", "fa", "dfa")})


def main():
    warnings.simplefilter("ignore", ConvergenceWarning)
    splits = {name: train_test_split(*load(return_X_y=True), random_state=0, stratify=load(return_X_y=True)[1])
              for name, load in DATA.items()}
    columns = [(name, max_iter) for name in DATA for max_iter in (20, 200)]
    print(f"{'estimator (defaults)':<32}" + "".join(f"{f'{name} {it}':>18}" for name, it in columns))
    for label, make in ESTIMATORS.items():
        row = f"{label:<32}"
        for name, max_iter in columns:
            X_train, X_test, y_train, y_test = splits[name]
            model = make_pipeline(StandardScaler(), make(max_iter=max_iter)).fit(X_train, y_train)
            row += f"{model.score(X_test, y_test):>18.3f}"
        print(row, flush=True)
    print("columns: data set and max_iter (20 epochs; 200 with the stopping rule: tol 1e-4, n_iter_no_change 10)")


if __name__ == "__main__":
    main()
