"""Bad inputs for the tests, made on demand in a temporary folder: `corpus` makes them, `fixtures` serves them."""
