"""Research tools above the core: like-for-like comparisons of estimators (:mod:`wakesleep.lab.compare`),
gradient diagnostics against exact references (:mod:`wakesleep.lab.diagnostics`) and the sample quality
of images by FID and KID (:mod:`wakesleep.lab.quality`), with the tables
they share (:mod:`wakesleep.lab.tables`).  Nothing in the core imports this package."""
