"""How a compressed model is scored: layer-wise runs against a teacher, the fitness, Fisher estimates."""
