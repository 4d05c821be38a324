"""A zoo of Keras 3 models none of us wrote, served bare (issue 16's "Show it")."""
