"""A faster float32 inference pass of bert4keras's BERT: the same weights and the same maths,
laid out so that TensorFlow's oneDNN kernels fuse more of it (``FastBert``).

bert4keras builds every layer on ``[B, L, H]`` tensors. Keras's ``Dense`` multiplies those by
``tensordot`` (reshape, matmul, reshape back) and adds its bias after the reshape, and the GELU is
a separate ``0.5·x·(1 + erf(x/√2))`` expression, so TensorFlow's graph remapper cannot fuse the
product, its bias and its activation into one oneDNN kernel. Here the token states stay
``[B·L, H]`` from the embeddings to the pooling; Q, K and V are one product with the three
kernels side by side; every bias goes through ``tf.nn.bias_add`` and the GELU is ``tf.nn.gelu``
(exact, erf), which the remapper fuses with the product before it; attention is two batched
matmuls instead of einsums. Nothing is approximated: outputs agree with the Keras model up to
float32 rounding (tests/test_fast_bert.py: < 1e-5; ~7e-7 at BERT-base size).

Measured on a BERT-base-size model, 32 texts of 42 tokens, float32, 2 cores of an AMX Xeon,
interleaved in one process (3 rounds): 789-823 ms a batch against 879-919 ms for the Keras
model, 8-13% less (``bench/encoder.py`` has the encoder's figures with and without it).

Only float32 and only what it reproduces exactly (``FastBert.unsupported`` says why not):
bert4keras's plain ``BERT`` (not NEZHA, RoFormer, the LM or UniLM masks: all subclasses),
``hidden_act`` gelu, no embedding mapping (ALBERT-style factorised embeddings) and mean, cls or
pooler pooling. Anything else runs the Keras model, as does training (dropout,
gradients) and export. ``BERT_REC_FAST_BERT=0`` in the environment turns it off.
"""

import math
import os

from .backend import tf
from .layers import TokenPooling

ENV_SWITCH = "BERT_REC_FAST_BERT"
POOLINGS = ("mean", "cls", "pooler")


def enabled():
    """False when the environment turns the fast pass off (BERT_REC_FAST_BERT=0)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


class FastBert:
    """``token_ids, segment_ids [B, L] -> vectors [B, H]`` float32, equal to bert4keras's model
    followed by ``pooling``. Each call reads the live weights once (``snapshot``), so a model
    trained after this was built is run with its new weights."""

    def __init__(self, transformer, pooling):
        reason = self.unsupported(transformer, pooling)
        if reason:
            raise ValueError(f"FastBert cannot run this model: {reason}")
        self.model = transformer.model
        self.layers = transformer.num_hidden_layers
        attention = self.model.get_layer("Transformer-0-MultiHeadSelfAttention")
        self.heads, self.head_size = attention.heads, attention.head_size
        self.pooling = pooling
        # mean and cls pool as the Keras model's TokenPooling layer does (the same layer)
        self.token_pooling = None if pooling == "pooler" else TokenPooling(mode=pooling)
        self._traced = None  # the tf.function, traced on the first run's weight shapes

    @staticmethod
    def unsupported(transformer, pooling):
        """Why FastBert cannot reproduce this bert4keras model and pooling ('' when it can)."""
        from bert4keras.models import BERT  # noqa: PLC0415
        if type(transformer) is not BERT:  # LM and UniLM masks are subclasses too
            return f"a {type(transformer).__name__}, not bert4keras's plain BERT"
        if pooling not in POOLINGS:
            return f"pooling {pooling!r}"
        if str(transformer.hidden_act) != "gelu":
            return f"hidden_act {transformer.hidden_act!r} (only gelu)"
        if transformer.hierarchical_position or transformer.custom_position_ids \
                or transformer.layer_norm_conds[0] is not None:
            return "hierarchical or custom positions, or conditional layer norms"
        model = transformer.model
        if _layer(model, "Embedding-Mapping") is not None or \
                _layer(model, "Embedding-Segment") is None:
            return "factorised embeddings or no segment embeddings"
        if (pooling == "pooler") != (_layer(model, "Pooler-Dense") is not None):
            return "the pooler layer does not match the pooling"
        for index in range(transformer.num_hidden_layers):
            attention = _layer(model, f"Transformer-{index}-MultiHeadSelfAttention")
            if attention is None or not attention.use_bias or not attention.attention_scale \
                    or attention.normalization != "softmax" \
                    or attention.key_size != attention.head_size \
                    or attention.heads * attention.head_size != transformer.hidden_size:
                return f"layer {index}'s attention is not BERT's"
        return ""

    def snapshot(self):
        """The live weights as one flat list of tensors (Q, K, V kernels side by side)."""
        get = self.model.get_layer
        out = [get("Embedding-Token").embeddings, get("Embedding-Segment").embeddings,
               get("Embedding-Position").embeddings, *self._norm(get("Embedding-Norm"))]
        for index in range(self.layers):
            attention = get(f"Transformer-{index}-MultiHeadSelfAttention")
            dense = (attention.q_dense, attention.k_dense, attention.v_dense)
            feed = get(f"Transformer-{index}-FeedForward")
            out += [tf.concat([d.kernel for d in dense], 1), tf.concat([d.bias for d in dense], 0),
                    attention.o_dense.kernel, attention.o_dense.bias,
                    *self._norm(get(f"Transformer-{index}-MultiHeadSelfAttention-Norm")),
                    feed.i0_dense.kernel, feed.i0_dense.bias, feed.o_dense.kernel,
                    feed.o_dense.bias, *self._norm(get(f"Transformer-{index}-FeedForward-Norm"))]
        if self.pooling == "pooler":
            pooler = get("Pooler-Dense")
            out += [pooler.kernel, pooler.bias]
        return [tf.convert_to_tensor(w) for w in out]

    @staticmethod
    def _norm(layer):
        return [layer.gamma, layer.beta, tf.constant(layer.epsilon, tf.float32)]

    def __call__(self, token_ids, segment_ids):
        return self.run(token_ids, segment_ids, self.snapshot())

    def run(self, token_ids, segment_ids, weights):
        """``_forward`` traced once for any ``[B, L]`` with ``weights`` from ``snapshot``."""
        if self._traced is None:
            spec = tf.TensorSpec([None, None], tf.int32)
            self._traced = tf.function(self._forward, input_signature=[
                spec, spec, [tf.TensorSpec(w.shape, w.dtype) for w in weights]])
        return self._traced(token_ids, segment_ids, weights)

    def _forward(self, token_ids, segment_ids, weights):
        token_table, segment_table, positions = weights[:3]
        batch, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        x = (tf.gather(token_table, token_ids) + tf.gather(segment_table, segment_ids)
             + positions[None, :length])  # [B, L, H]
        hidden = tf.shape(x)[-1]
        x = _layer_norm(tf.reshape(x, [-1, hidden]), *weights[3:6])  # [B·L, H]
        mask = tf.cast(tf.not_equal(token_ids, 0), tf.float32)  # [B, L]
        bias = (1.0 - mask)[:, None, None, :] * -1e12  # [B, 1, 1, L]: padding keys masked
        per_layer = 14  # snapshot: 6 embedding tensors, then 14 per layer
        for index in range(self.layers):
            w = weights[6 + index * per_layer: 6 + (index + 1) * per_layer]
            qkv = tf.nn.bias_add(tf.matmul(x, w[0]), w[1])  # [B·L, 3H]
            qkv = tf.transpose(tf.reshape(qkv, [batch, length, 3, self.heads, self.head_size]),
                               [2, 0, 3, 1, 4])  # [3, B, heads, L, d]
            scores = tf.matmul(qkv[0], qkv[1], transpose_b=True) / math.sqrt(self.head_size)
            context = tf.matmul(tf.nn.softmax(scores + bias), qkv[2])  # [B, heads, L, d]
            context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, hidden])
            x = _layer_norm(x + tf.nn.bias_add(tf.matmul(context, w[2]), w[3]), *w[4:7])
            inner = tf.nn.gelu(tf.nn.bias_add(tf.matmul(x, w[7]), w[8]), approximate=False)
            x = _layer_norm(x + tf.nn.bias_add(tf.matmul(inner, w[9]), w[10]), *w[11:14])
        x = tf.reshape(x, [batch, length, hidden])
        if self.pooling == "pooler":
            return tf.tanh(tf.nn.bias_add(tf.matmul(x[:, 0], weights[-2]), weights[-1]))
        return self.token_pooling([x, token_ids])


def _layer_norm(x, gamma, beta, epsilon):
    """bert4keras's LayerNormalization over the last axis."""
    centred = x - tf.reduce_mean(x, axis=-1, keepdims=True)
    variance = tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
    return tf.math.divide_no_nan(centred, tf.sqrt(variance + epsilon)) * gamma + beta
