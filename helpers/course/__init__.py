"""The assignment: the nine exercises (``catalogue``), their checks (``cases``, ``compare``,
``checking``), the notebooks' check cells (``notebook``), the student edition (``edition``,
``sources`` and the manifest ``handout.txt``) and grading (``grading``, ``worker``).

Nothing is imported here: the grader loads this subpackage by path in a subprocess, beside a
submission's own ``helpers``, and each module imports only its siblings and torch.
"""
