"""tensoradapt: task-aware tensor adaptation of foundation models."""
