"""Research tools above the core: like-for-like comparisons of estimators (:mod:`wakesleep.lab.compare`)
and gradient diagnostics against exact references (:mod:`wakesleep.lab.diagnostics`), with the tables
they share (:mod:`wakesleep.lab.tables`).  Nothing in the core imports this package."""
