"""Dispatcher role: the tf.data service dispatcher and its data workers."""
