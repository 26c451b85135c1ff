"""``gguf``: a llama.cpp quantization type per tensor (codec, problem, types, source, baselines, export, recipe)."""
