"""Loss-and-prediction helpers for classification heads (sigmoid with sample-rate correction, softmax)."""
from __future__ import annotations

import math

import tensorflow as tf

from worker.modeling.estimator_spec import ModeKeys
from worker.modeling.losses.finite_inputs import checked_finite


def get_sigmoid_loss_and_pred(name, logits, label, batch_size=None, sample_rate=1.0, sample_bias=False,
                              mode=ModeKeys.TRAIN, instance_weight=None, mask=None, logit_clip_threshold=None,
                              predict_before_correction=True):
    """Summed sigmoid cross-entropy over `logits - log(sample_rate)`; `pred` is sigmoid of the raw logits
    unless `predict_before_correction=False`. `batch_size` is ignored: the logits' first dim is used."""
    logits = tf.reshape(logits, (-1,))
    if mode == ModeKeys.PREDICT:
        return None, tf.sigmoid(logits, name=f"{name}_sigmoid_pred")
    if sample_bias:
        raise ValueError(f"{name}: sample_bias=True is not supported (only the log(sample_rate) correction is)")
    batch = tf.shape(logits)[0]
    if sample_rate is None:
        sample_rate = 1.0
    if isinstance(sample_rate, (int, float)):
        sample_rate = tf.fill([batch], tf.constant(float(sample_rate), logits.dtype))
    sample_rate = tf.reshape(tf.cast(sample_rate, logits.dtype), (-1,))
    logits_biased = tf.subtract(logits, tf.math.log(sample_rate), name=f"{name}_sample_rate_correction")
    pred = tf.sigmoid(logits if predict_before_correction else logits_biased, name=f"{name}_sigmoid_pred")
    if logit_clip_threshold is not None:
        if not 0 < logit_clip_threshold < 1:
            raise ValueError(f"{name}: logit_clip_threshold must be in (0, 1), got {logit_clip_threshold!r}")
        threshold = math.log((1 - logit_clip_threshold) / logit_clip_threshold)
        logits_biased = tf.clip_by_value(logits_biased, -threshold, threshold)
    label = checked_finite(tf.cast(tf.reshape(label, (-1,)), logits.dtype), f"{name}: label")
    losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logits_biased, name=f"{name}_sigmoid_loss")
    if instance_weight is not None:
        instance_weight = checked_finite(tf.cast(tf.reshape(instance_weight, (-1,)), logits.dtype),
                                         f"{name}: instance_weight")
    if mask is not None:
        mask = tf.reshape(tf.cast(mask, tf.bool), (-1,))
        losses = tf.boolean_mask(losses, mask)
        if instance_weight is not None:
            instance_weight = tf.boolean_mask(instance_weight, mask)
    if instance_weight is not None:
        losses = losses * instance_weight
    return tf.reduce_sum(losses), pred


def get_softmax_loss_and_pred(name, logits, label, mode=ModeKeys.TRAIN):
    pred = tf.argmax(tf.nn.softmax(logits, name=f"{name}_softmax_pred"), axis=1)
    if mode == ModeKeys.PREDICT:
        return None, pred
    loss = tf.nn.softmax_cross_entropy_with_logits(labels=label, logits=logits, name=f"{name}_softmax_loss")
    return loss, pred
