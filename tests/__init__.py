"""Tests of the chaosnb package (pytest) and of the book (nbval, browser check)."""
