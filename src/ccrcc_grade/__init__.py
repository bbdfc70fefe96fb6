"""ccrcc-grade: WHO/ISUP grade of clear cell RCC from multi-phase CT."""

__version__ = "0.1.0"
