"""The problem of any weight codec (variants swapped in per unit) and the variant database it reads."""
