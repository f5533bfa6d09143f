"""Row loops written as explicit LLVM vector IR, where LLVM's loop vectorizer does badly.

The kernels' loops are scalar Numba code that LLVM vectorizes.  Some of them, the
float32 rows' hot loops, come out slower than the same arithmetic written on vectors
directly, or cannot carry a prefetch, and the compensated sums are not vectorized at all,
so this module emits those loops itself (Numba ``@intrinsic``, llvmlite IR):

* ``row_max``, the max of a row skipping NaN.  ``m = x if x > m else m`` is not
  vectorized without the ``nnan`` flag, which the kernels never use (``_config``);
  ``llvm.maxnum`` is, but LLVM 22 tests every loaded vector for NaN and merges each
  accumulator NaN-aware: 5 to 6 instructions a vector.  On vectors the select is one
  ``maxps``.  0.127 -> 0.056 ns per float32 element at 1000 classes.
* ``row_exp32_store``, e_j = ``exp32_difference_floored(x_j, m)`` stored for a float32
  row: the same operations in the same order (bit for bit the scalar results, checked
  on every float32 x <= 0 by ``softmaxlab exp-accuracy``), and on AVX-512 the scaling
  by 2**k in one ``vscalefps`` instead of four instructions.  The elements below the
  floor (masked logits) are not scaled to 0 by an underflow but zeroed by that
  instruction's mask: the underflow's microcode assist made half-masked rows 4-5 times
  slower.  The lanes past a row's end load the row's max (e = 1) for the same reason.
  With the float64 sum that follows it, 0.38 -> 0.31 ns per element at 1000 classes
  (0.34 without ``vscalefps``: the loop LLVM makes of the scalar code is slower than the
  same operations written here, by about 10%).  Each vector also prefetches a line of
  the block the row kernel reads next (``ahead``, ``rows.following_block``): the exp
  loop is arithmetic-bound and the next block's max pass memory-bound, and with the hint
  they overlap instead of taking turns (``docs/performance.md``, seventh session).

* ``row_exp_product_difference32``, log_softmax_backward's float32 write, dx_j = dy_j -
  e^(y_j) S with ``exp_f32_wide`` in float64 (bit for bit the scalar loop).  The loop is
  bound by its multiplies, the next row's reduce by memory: the loop prefetches the same
  block of the next row into L2, so the two overlap instead of taking turns (measured by
  ``benchmarks/write_prefetch.py``; figures in ``docs/performance.md``).

* ``row_dot2`` and ``row_sum2``, the compensated float64 sums of the backward
  normalizers (sum_j y_j dy_j, sum_j dy_j): TwoSum's steps must not be reassociated,
  and without ``reassoc`` LLVM keeps the loop scalar (4.9 ns per element, measured); on
  four vectors they cost 0.28 and 0.24 ns per element against 0.18 and 0.08 for the
  plain sums (one thread, a row of 10^6 float64 in cache).
* ``row_gap_sums`` and ``row_target_gap_sums``, cross-entropy's sums for label smoothing
  (sum_j w_j (m - z_j), sum_j w_j) and for probability targets (their weights w_j (keep p_j
  + uniform)): the plain sums, in an order fixed here.  Left to LLVM (``reassoc``), the
  copies of the function linked into two kernels vectorized differently, so a kernel loaded
  from the cache gave other last bits than one compiled in the process.

* ``row_shifted_log32_stream`` and ``row_scaled32_stream``, the float32 writes of
  log_softmax, softmax and cross-entropy's gradient (without label smoothing) for outputs
  too large to stay in cache (``_config.streamed_rows``): the
  scalar loops' operations, bit for bit, with every whole aligned line of the output
  stored non-temporally (``!nontemporal``, ``vmovntps``), so that it is not read into the
  cache before it is overwritten, then an ``sfence``.  At 64 MB outputs they take 4-35% off
  the kernels (``docs/performance.md``, fifteenth session).

All of them loop over ``VECTOR_BYTES`` = 64-byte vectors (16 float32 or 8 float64, an
AVX-512 register; the log_softmax_backward write widens its 16 float32 to two registers of
float64; LLVM splits them on narrower targets) and finish with a masked load (and store)
of the last partial vector (``llvm.masked.load``/``store``, generic IR).  Only
``vscalefps`` is x86-specific, emitted where the JIT target has AVX-512F.  The kernels
call them through ``rows.block_max``, ``rows.store_exp32_floored`` and
``rows.store_exp_product_difference``, for C-contiguous rows; other rows keep the scalar
loops.  Measured on one thread of a Zen 4 (``tests/kernels/test_vector.py`` checks the
results and the instructions).

Semantics of ``row_max``, element for element those of the scalar loop: acc = x if
x > acc else acc from -inf, so NaN is skipped (every comparison with NaN is false) and
a row of NaN or of nothing gives -inf.  Where the max is a zero, its sign is the first
zero's of its lane (``maxnum`` leaves it unspecified).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .exp import (
    _FLOOR_OFFSET_32,
    _FORMATS,
    _HIGH_32,
    _LN2,
    _LN2_HI_32,
    _LN2_LO_32,
    _LOG2E,
    _LOG2E_32,
    _LOW_32,
    _P1_32,
    _P32,
    _POW2_OFFSET,
    _SHIFT,
    _SHIFT_32,
)

VECTOR_BYTES = 64
_ACCUMULATORS = 4
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_BYTE_POINTER = ir.IntType(8).as_pointer()


def _indices(count, start=0):
    return ir.Constant(ir.VectorType(_I32, count), list(range(start, start + count)))


def _splat(builder, value, vector_type):
    """A vector of ``vector_type`` with every lane ``value`` (an IR scalar)."""
    first = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(first, ir.Constant(vector_type, ir.Undefined), zeros)


# Numba's fastmath pass gives its flags to every float instruction of a function that
# has none, an intrinsic's included: with the caller's ``reassoc`` LLVM folded the
# two_sum below and e_j moved by several ULP.  Each instruction here carries
# ``contract`` (which only fuses a product into an addition, and no product here meets
# one), so it keeps its meaning inside any caller.
_FLAGS = ("contract",)


def _larger(builder, value, accumulator):
    """value if value > accumulator else accumulator, lane by lane (NaN values are skipped)."""
    return builder.select(builder.fcmp_ordered(">", value, accumulator, flags=_FLAGS), value, accumulator)


def _vector_pointer(builder, data, index, vector_type):
    return builder.bitcast(builder.gep(data, [index]), ir.PointerType(vector_type))


def _counted_loop(builder, start, stop, step, carried, body):
    """for i in range(start, stop, step) (stop - start a multiple of step), carrying values.

    ``carried`` are the initial values; ``body(i, values)`` emits one iteration and
    returns the next values.  Returns (i at exit, the final values).
    """
    before = builder.block
    header = builder.append_basic_block("vector.header")
    loop = builder.append_basic_block("vector.body")
    exit_block = builder.append_basic_block("vector.exit")
    builder.branch(header)
    builder.position_at_end(header)
    index = builder.phi(start.type)
    index.add_incoming(start, before)
    phis = []
    for value in carried:
        phi = builder.phi(value.type)
        phi.add_incoming(value, before)
        phis.append(phi)
    builder.cbranch(builder.icmp_signed("<", index, stop), loop, exit_block)
    builder.position_at_end(loop)
    updated = body(index, phis)
    end = builder.block
    index.add_incoming(builder.add(index, ir.Constant(index.type, step)), end)
    for phi, value in zip(phis, updated):
        phi.add_incoming(value, end)
    builder.branch(header)
    builder.position_at_end(exit_block)
    return index, phis


def _declared(module, name, function_type):
    """The function ``name`` of ``module``, declared if new (llvmlite's ``declare_intrinsic``
    does not mangle the names of vector intrinsics, so they are spelled out)."""
    return module.globals.get(name) or ir.Function(module, function_type, name)


def _mangled(vector_type):
    """LLVM's name suffix of a float vector type: v16f32, v8f64."""
    bits = 64 if isinstance(vector_type.element, ir.DoubleType) else 32
    return f"v{vector_type.count}f{bits}"


def _element_bytes(vector_type):
    return 8 if isinstance(vector_type.element, ir.DoubleType) else 4


def _load_tail(builder, data, length, index, vector_type, padding):
    """(data[index:length] as a vector, its lanes past the end ``padding``; the mask of the lanes in it)."""
    lanes = vector_type.count
    remaining = builder.trunc(builder.sub(length, index), _I32)
    mask = builder.icmp_signed("<", _indices(lanes), _splat(builder, remaining, ir.VectorType(_I32, lanes)))
    pointer_type = ir.PointerType(vector_type)
    load = _declared(builder.module, f"llvm.masked.load.{_mangled(vector_type)}.p0",
                     ir.FunctionType(vector_type, [pointer_type, _I32, mask.type, vector_type]))
    alignment = ir.Constant(_I32, _element_bytes(vector_type))
    return builder.call(load, [_vector_pointer(builder, data, index, vector_type), alignment, mask, padding]), mask


def _store_tail(builder, value, data, index, mask):
    """data[index + lane] = value[lane] for the lanes of ``mask``."""
    vector_type = value.type
    pointer_type = ir.PointerType(vector_type)
    store = _declared(builder.module, f"llvm.masked.store.{_mangled(vector_type)}.p0",
                      ir.FunctionType(ir.VoidType(), [vector_type, pointer_type, _I32, mask.type]))
    alignment = ir.Constant(_I32, _element_bytes(vector_type))
    builder.call(store, [value, _vector_pointer(builder, data, index, vector_type), alignment, mask])


def _prefetch_line(builder, data, index, locality):
    """A read prefetch of the line of data[index] (``llvm.prefetch``, a hint: no fault, no
    effect on any value); ``locality`` 3 keeps it in L1, 2 in L2."""
    prefetch = _declared(builder.module, "llvm.prefetch.p0",
                         ir.FunctionType(ir.VoidType(), [_BYTE_POINTER, _I32, _I32, _I32]))
    line = builder.bitcast(builder.gep(data, [index]), _BYTE_POINTER)
    # read (0), the locality, data (1)
    builder.call(prefetch, [line, ir.Constant(_I32, 0), ir.Constant(_I32, locality), ir.Constant(_I32, 1)])


def _whole_vectors_hinted(builder, length, ahead_length, lanes, step):
    """``step(index, prefetching)`` over the whole vectors of a row of ``length``: with
    ``prefetching`` over those with a line of a block ``ahead_length`` long to prefetch, then
    without over the rest.  Returns the index of the partial vector left."""
    whole = builder.and_(length, ir.Constant(_I64, -lanes))
    ahead_whole = builder.and_(ahead_length, ir.Constant(_I64, -lanes))
    hinted = builder.select(builder.icmp_signed("<", ahead_whole, whole), ahead_whole, whole)
    index = ir.Constant(_I64, 0)
    for prefetching, stop in ((True, hinted), (False, whole)):
        index, _ = _counted_loop(builder, index, stop, lanes, [],
                                 lambda i, carried, prefetching=prefetching: step(i, prefetching) or [])
    return index


def contiguous_float_row(values):
    """Whether the Numba type ``values`` is a C-contiguous 1-D float32/float64 array."""
    return (isinstance(values, types.Array) and values.ndim == 1 and values.layout == "C"
            and values.dtype in (types.float32, types.float64))


@intrinsic
def row_max(typingctx, values):
    """max of a C-contiguous 1-D float array, NaN skipped, -inf if none (explicit vector IR)."""
    if not contiguous_float_row(values):
        return None

    def codegen(context, builder, signature, args):
        element = context.get_value_type(signature.args[0].dtype)
        lanes = VECTOR_BYTES // (signature.args[0].dtype.bitwidth // 8)
        vector_type = ir.VectorType(element, lanes)
        array = context.make_array(signature.args[0])(context, builder, args[0])
        length = builder.extract_value(array.shape, 0)
        lowest = ir.Constant(vector_type, [float("-inf")] * lanes)

        def load(index, offset=0):
            position = builder.add(index, ir.Constant(_I64, offset)) if offset else index
            return builder.load(_vector_pointer(builder, array.data, position, vector_type), align=_element_bytes(vector_type))

        # acc_u = max(acc_u, x[i + u LANES : i + (u + 1) LANES]) over whole groups of vectors
        group = lanes * _ACCUMULATORS
        grouped = builder.and_(length, ir.Constant(_I64, -group))
        index, accumulators = _counted_loop(
            builder, ir.Constant(_I64, 0), grouped, group, [lowest] * _ACCUMULATORS,
            lambda i, accs: [_larger(builder, load(i, u * lanes), acc) for u, acc in enumerate(accs)],
        )
        accumulator = accumulators[0]
        for other in accumulators[1:]:
            accumulator = _larger(builder, other, accumulator)
        # the whole vectors left, one at a time
        whole = builder.and_(length, ir.Constant(_I64, -lanes))
        index, (accumulator,) = _counted_loop(
            builder, index, whole, lanes, [accumulator], lambda i, accs: [_larger(builder, load(i), accs[0])]
        )
        # the last partial vector: lanes past the end load -inf
        tail, _ = _load_tail(builder, array.data, length, index, vector_type, lowest)
        accumulator = _larger(builder, tail, accumulator)
        # across the lanes, halving
        width = lanes
        while width > 1:
            width //= 2
            low = builder.shuffle_vector(accumulator, accumulator, _indices(width))
            high = builder.shuffle_vector(accumulator, accumulator, _indices(width, width))
            accumulator = _larger(builder, high, low)
        return builder.extract_element(accumulator, ir.Constant(_I32, 0))

    return values.dtype(values), codegen


def _has_avx512(context):
    """Whether the JIT target has AVX-512F (the features Numba compiles for, ``NUMBA_CPU_FEATURES``)."""
    features = getattr(context.codegen(), "_tm_features", "") or ""
    return "+avx512f" in features.split(",")


def _exp32_floored_vector(builder, values, largest, floor, scale_by_scalef):
    """e = exp32_difference_floored(values, largest) on a vector, bit for bit.

    Each step is the scalar function's, as LLVM compiles it (``contract``: the products
    that meet an addition are FMAs), so the results are bit for bit the scalar ones:
    the elements below floor = largest - 110 give 0 (computed as ``largest``, whose e = 1,
    then zeroed: the scalar function's clamp scales them to 0 by an underflow, which
    costs a microcode assist; ``exp``'s "Elements below the floor");
    (d, low) = two_sum(clamped, -largest);
    k = fma(d, log2e, 1.5 * 2**23) - 1.5 * 2**23; r = fma(-k, ln2_hi, d) + fma(-k, ln2_lo, low);
    e^r = fma(r, P1(r), 1) by Horner's rule in FMAs; and the scaling by 2**k, k <= 0, in one
    rounding: ``vscalefps`` where the target has AVX-512 (one instruction), else the two
    products of ``exp._scale_pow2_nonpositive`` (exact, then rounding).
    """
    vector_type = values.type
    lanes = vector_type.count
    module = builder.module

    def constant(value):
        return ir.Constant(vector_type, [float(value)] * lanes)

    fma = _declared(module, f"llvm.fma.{_mangled(vector_type)}", ir.FunctionType(vector_type, [vector_type] * 3))

    def fused(a, b, c):
        return builder.call(fma, [a, b, c])

    below = builder.fcmp_ordered("<", values, floor, flags=_FLAGS)
    clamped = builder.select(below, largest, values)
    negated = builder.fneg(largest, flags=_FLAGS)
    difference = builder.fadd(clamped, negated, flags=_FLAGS)
    a_part = builder.fsub(difference, negated, flags=_FLAGS)
    b_part = builder.fsub(difference, a_part, flags=_FLAGS)
    low = builder.fadd(
        builder.fsub(clamped, a_part, flags=_FLAGS), builder.fsub(negated, b_part, flags=_FLAGS), flags=_FLAGS
    )
    shifted = fused(difference, constant(_LOG2E_32), constant(_SHIFT_32))
    k = builder.fsub(shifted, constant(_SHIFT_32), flags=_FLAGS)
    minus_k = builder.fneg(k, flags=_FLAGS)
    r = builder.fadd(
        fused(minus_k, constant(_LN2_HI_32), difference), fused(minus_k, constant(_LN2_LO_32), low), flags=_FLAGS
    )
    polynomial = constant(_P1_32[0])
    for coefficient in _P1_32[1:]:
        polynomial = fused(polynomial, r, constant(coefficient))
    mantissa = fused(r, polynomial, constant(1.0))
    if scale_by_scalef:
        scalef = _declared(
            module, "llvm.x86.avx512.mask.scalef.ps.512",
            ir.FunctionType(vector_type, [vector_type, vector_type, vector_type, ir.IntType(16), _I32]),
        )
        # mantissa * 2**floor(k), rounded once, in the lanes not below the floor; 0 in the
        # others (the mask's zeroing: no extra instruction); rounding 4 = the current mode
        kept = builder.bitcast(builder.not_(below), ir.IntType(lanes))
        return builder.call(scalef, [mantissa, k, constant(0.0), kept, ir.Constant(_I32, 4)])
    integers = ir.VectorType(_I32, lanes)
    exponent = builder.shl(builder.bitcast(shifted, integers), ir.Constant(integers, [23] * lanes))
    exponent = builder.add(exponent, ir.Constant(integers, [(127 + _POW2_OFFSET) << 23] * lanes))
    scaled = builder.fmul(mantissa, builder.bitcast(exponent, vector_type), flags=_FLAGS)
    return builder.select(below, constant(0.0), builder.fmul(scaled, constant(2.0**-_POW2_OFFSET), flags=_FLAGS))


@intrinsic
def row_exp32_store(typingctx, values, largest, destination, ahead):
    """destination[j] = exp32_difference_floored(values[j], largest) over a row (explicit vector IR),
    with the start of ``ahead`` prefetched into L1 along the way.

    For C-contiguous float32 ``values``, ``destination`` (of one length) and ``ahead`` and a
    float32 ``largest`` with |largest| < ``EXP32_FLOOR_LIMIT``.  Measured at 1000 classes, one
    thread, exp and the float64 sum after it: 0.31 ns per element against 0.38 for LLVM's
    vectorization of the scalar loop (0.34 with the two products instead of ``vscalefps``).

    ``ahead`` is the block a row kernel reads next (empty for none): vector j also prefetches
    the line of ``ahead[16 j]`` (``llvm.prefetch``, a hint: no fault, no effect on any value),
    so that its max pass finds it in cache while this loop computes.  The exp loop is
    arithmetic-bound and the max pass memory-bound: without the hint the two take turns.
    """
    if not (contiguous_float_row(values) and contiguous_float_row(destination) and contiguous_float_row(ahead)
            and values.dtype == destination.dtype == ahead.dtype == largest == types.float32):
        return None

    def codegen(context, builder, signature, args):
        lanes = VECTOR_BYTES // 4
        vector_type = ir.VectorType(ir.FloatType(), lanes)
        source = context.make_array(signature.args[0])(context, builder, args[0])
        target = context.make_array(signature.args[2])(context, builder, args[2])
        following = context.make_array(signature.args[3])(context, builder, args[3])
        length = builder.extract_value(source.shape, 0)
        largest_vector = _splat(builder, args[1], vector_type)
        floor = builder.fsub(largest_vector, ir.Constant(vector_type, [float(_FLOOR_OFFSET_32)] * lanes), flags=_FLAGS)
        use_scalef = _has_avx512(context)

        def exponentials(loaded):
            return _exp32_floored_vector(builder, loaded, largest_vector, floor, use_scalef)

        def step(index, prefetching):
            if prefetching:
                _prefetch_line(builder, following.data, index, locality=3)
            loaded = builder.load(_vector_pointer(builder, source.data, index, vector_type), align=4)
            builder.store(exponentials(loaded), _vector_pointer(builder, target.data, index, vector_type), align=4)

        index = _whole_vectors_hinted(builder, length, builder.extract_value(following.shape, 0), lanes, step)
        # the last partial vector: the lanes past the end load ``largest`` (e = 1: no
        # underflow, whose microcode assist cost about 80 ns a row) and are not stored
        tail, mask = _load_tail(builder, source.data, length, index, vector_type, largest_vector)
        _store_tail(builder, exponentials(tail), target.data, index, mask)
        return context.get_dummy_value()

    return types.none(values, largest, destination, ahead), codegen


def _exp_f32_wide_vector(builder, values):
    """``exp.exp_f32_wide`` on a float64 vector, the same operations in the same order.

    As LLVM compiles the scalar function (``contract``): the clamps at [-708, 709] (NaN
    passes, every comparison with it false); shifted = fma(x, log2e, 1.5 * 2**52), k =
    shifted - 1.5 * 2**52, r = fma(-k, ln2, x); e^r = 1 + r Q(r) by Horner's rule in FMAs;
    times 2**k, whose bits are (bits(shifted) - bits(1.5 * 2**52) + 1023) << 52.  So the
    results are the scalar ones bit for bit.
    """
    vector_type = values.type
    lanes = vector_type.count
    int_type, magic, bias, mantissa_bits = _FORMATS[64]
    integers = ir.VectorType(int_type, lanes)
    fma = _declared(builder.module, f"llvm.fma.{_mangled(vector_type)}", ir.FunctionType(vector_type, [vector_type] * 3))

    def constant(value, kind=vector_type):
        return ir.Constant(kind, [value] * lanes)

    def fused(a, b, c):
        return builder.call(fma, [a, b, c])

    low, high = constant(_LOW_32), constant(_HIGH_32)
    clamped = builder.select(builder.fcmp_ordered("<", values, low, flags=_FLAGS), low, values)
    clamped = builder.select(builder.fcmp_ordered(">", clamped, high, flags=_FLAGS), high, clamped)
    shifted = fused(clamped, constant(_LOG2E), constant(_SHIFT))
    k = builder.fsub(shifted, constant(_SHIFT), flags=_FLAGS)
    r = fused(builder.fneg(k, flags=_FLAGS), constant(_LN2), clamped)
    polynomial = constant(_P32[0])
    for coefficient in _P32[1:]:
        polynomial = fused(polynomial, r, constant(coefficient))
    k_bits = builder.sub(builder.bitcast(shifted, integers), constant(magic, integers))
    exponent = builder.shl(builder.add(k_bits, constant(bias, integers)), constant(mantissa_bits, integers))
    return builder.fmul(polynomial, builder.bitcast(exponent, vector_type), flags=_FLAGS)


@intrinsic
def row_exp_product_difference32(typingctx, y, dy, destination, total, ahead_y, ahead_dy):
    """destination[j] = float32(dy_j - exp_f32_wide(y_j) total) over a float32 row (explicit
    vector IR), with the start of ``ahead_y`` and ``ahead_dy`` prefetched along the way.

    log_softmax_backward's write: each element widened to float64, ``exp_f32_wide`` (the
    operations of ``_exp_f32_wide_vector``), dy_j - e_j total in one FMA, rounded once to
    float32: the scalar loop's results bit for bit.  For C-contiguous float32 ``y``, ``dy``,
    ``destination`` (of one length), ``ahead_y``, ``ahead_dy`` and a float64 ``total``.

    ``ahead_y`` and ``ahead_dy`` are the blocks the row kernel reads next (empty for none):
    vector j (16 elements) also prefetches the lines of ``ahead_y[16 j]`` and
    ``ahead_dy[16 j]`` into L2 (``llvm.prefetch``, a hint).  This loop is bound by its
    arithmetic (``benchmarks/pass_costs.py`` counts it) and the next row's reduce by
    memory: without the hint the two take turns.
    """
    if not _exp_product_difference_rows(y, dy, destination, total, ahead_y, ahead_dy):
        return None

    def codegen(context, builder, signature, args):
        lanes, narrow, (source, upstream, target, following_y), differences, prefetch = _exp_product_difference_parts(
            context, builder, signature, args)
        length = builder.extract_value(source.shape, 0)

        def step(index, prefetching):
            if prefetching:
                prefetch(index)
            loaded = [builder.load(_vector_pointer(builder, array.data, index, narrow), align=4)
                      for array in (source, upstream)]
            builder.store(differences(*loaded), _vector_pointer(builder, target.data, index, narrow), align=4)

        index = _whole_vectors_hinted(builder, length, builder.extract_value(following_y.shape, 0), lanes, step)
        # the last partial vector (lanes past the end load 0 and are not stored)
        zeros = ir.Constant(narrow, [0.0] * lanes)
        y_tail, mask = _load_tail(builder, source.data, length, index, narrow, zeros)
        dy_tail, _ = _load_tail(builder, upstream.data, length, index, narrow, zeros)
        _store_tail(builder, differences(y_tail, dy_tail), target.data, index, mask)
        return context.get_dummy_value()

    return types.none(y, dy, destination, total, ahead_y, ahead_dy), codegen


def _exp_product_difference_rows(y, dy, destination, total, ahead_y, ahead_dy):
    """Whether the Numba types are those of log_softmax_backward's float32 write: C-contiguous
    float32 rows and a float64 ``total``."""
    rows = (y, dy, destination, ahead_y, ahead_dy)
    return all(contiguous_float_row(row) and row.dtype == types.float32 for row in rows) and total == types.float64


def _exp_product_difference_parts(context, builder, signature, args):
    """What both float32 writes of log_softmax_backward emit with, from the intrinsics'
    arguments (y, dy, destination, total, ahead_y, ahead_dy): (lanes, the float32 vector type,
    the arrays y, dy, destination and ahead_y, ``differences(y_vector, dy_vector)`` which
    emits float32(dy - exp_f32_wide(y) total), ``prefetch(index)`` which emits the L2
    prefetch of the lines of ahead_y[index] and ahead_dy[index])."""
    lanes = VECTOR_BYTES // 4
    narrow = ir.VectorType(ir.FloatType(), lanes)
    wide = ir.VectorType(ir.DoubleType(), lanes)
    source, upstream, target, following_y, following_dy = (
        context.make_array(kind)(context, builder, value)
        for kind, value in zip(signature.args[:3] + signature.args[4:], args[:3] + args[4:])
    )
    total = _splat(builder, args[3], wide)
    fma = _declared(builder.module, f"llvm.fma.{_mangled(wide)}", ir.FunctionType(wide, [wide] * 3))

    def differences(y_vector, dy_vector):
        exponentials = _exp_f32_wide_vector(builder, builder.fpext(y_vector, wide))
        # fma(-e, S, dy) as the scalar loop: fma(e, -S, dy) would give a NaN S's sign to the NaN
        minus = builder.fneg(exponentials, flags=_FLAGS)
        return builder.fptrunc(builder.call(fma, [minus, total, builder.fpext(dy_vector, wide)]), narrow)

    def prefetch(index):
        for following in (following_y, following_dy):
            _prefetch_line(builder, following.data, index, locality=2)

    return lanes, narrow, (source, upstream, target, following_y), differences, prefetch


# The compensated sums' instructions carry ``arcp`` alone, which only concerns divisions
# (there are none): without a flag Numba would give them the caller's (``reassoc`` folds
# TwoSum's error to 0), and ``contract`` could fuse a product into the sum it feeds, after
# which s + e is no longer the sum of the rounded terms.
_EXACT = ("arcp",)


def _two_sum_vector(builder, a, b):
    """(s, e) = TwoSum(a, b) lane by lane: s = fl(a + b), s + e = a + b exactly (6 operations)."""
    s = builder.fadd(a, b, flags=_EXACT)
    a_part = builder.fsub(s, b, flags=_EXACT)
    b_part = builder.fsub(s, a_part, flags=_EXACT)
    return s, builder.fadd(builder.fsub(a, a_part, flags=_EXACT), builder.fsub(b, b_part, flags=_EXACT), flags=_EXACT)


def _compensated_codegen(product):
    """Codegen of ``row_sum2`` (``product`` False) or ``row_dot2`` (True): see ``row_dot2``."""

    def codegen(context, builder, signature, args):
        lanes = VECTOR_BYTES // 8
        vector_type = ir.VectorType(ir.DoubleType(), lanes)
        arrays = [context.make_array(kind)(context, builder, value) for kind, value in zip(signature.args, args)]
        length = builder.extract_value(arrays[0].shape, 0)
        zeros = ir.Constant(vector_type, [0.0] * lanes)
        fma = _declared(builder.module, f"llvm.fma.{_mangled(vector_type)}", ir.FunctionType(vector_type, [vector_type] * 3))

        def step(loaded, total, compensation):
            if product:
                term = builder.fmul(loaded[0], loaded[1], flags=_EXACT)
                product_error = builder.call(fma, [loaded[0], loaded[1], builder.fneg(term, flags=_EXACT)])
            else:
                term = loaded[0]
            total, sum_error = _two_sum_vector(builder, total, term)
            if product:
                sum_error = builder.fadd(sum_error, product_error, flags=_EXACT)
            return total, builder.fadd(compensation, sum_error, flags=_EXACT)

        def load(index, u):
            position = builder.add(index, ir.Constant(_I64, u * lanes))
            return [builder.load(_vector_pointer(builder, array.data, position, vector_type), align=8) for array in arrays]

        def steps(loads, carried):
            pairs = [step(loads[u], carried[2 * u], carried[2 * u + 1]) for u in range(_ACCUMULATORS)]
            return [value for pair in pairs for value in pair]

        # accumulator u, lane k takes the elements j = 8 u + k mod 32 (the "logical lane" 8 u + k)
        group = lanes * _ACCUMULATORS
        grouped = builder.and_(length, ir.Constant(_I64, -group))
        index, carried = _counted_loop(
            builder, ir.Constant(_I64, 0), grouped, group, [zeros] * (2 * _ACCUMULATORS),
            lambda i, values: steps([load(i, u) for u in range(_ACCUMULATORS)], values),
        )
        # the last partial group, padded with zeros (whose terms add nothing)
        tails = []
        for u in range(_ACCUMULATORS):
            position = builder.add(index, ir.Constant(_I64, u * lanes))
            tails.append([_load_tail(builder, array.data, length, position, vector_type, zeros)[0] for array in arrays])
        carried = steps(tails, carried)
        totals, compensations = carried[0::2], carried[1::2]

        def joined(high, low, other_high, other_low):
            high, error = _two_sum_vector(builder, high, other_high)
            return high, builder.fadd(low, builder.fadd(error, other_low, flags=_EXACT), flags=_EXACT)

        # the 32 logical lanes halved: lane k with lane k + 16, then + 8 (the accumulators),
        # then + 4, + 2, + 1 inside the vector
        while len(totals) > 1:
            half = len(totals) // 2
            pairs = [joined(totals[u], compensations[u], totals[u + half], compensations[u + half]) for u in range(half)]
            totals, compensations = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
        total, compensation = totals[0], compensations[0]
        width = lanes
        while width > 1:
            width //= 2
            total, compensation = joined(
                builder.shuffle_vector(total, total, _indices(width)),
                builder.shuffle_vector(compensation, compensation, _indices(width)),
                builder.shuffle_vector(total, total, _indices(width, width)),
                builder.shuffle_vector(compensation, compensation, _indices(width, width)),
            )
        high = builder.extract_element(total, ir.Constant(_I32, 0))
        low = builder.extract_element(compensation, ir.Constant(_I32, 0))
        return context.make_tuple(builder, signature.return_type, [high, low])

    return codegen


def _gap_sums_codegen(probabilities, weighted):
    """Codegen of ``row_gap_sums`` (``probabilities`` False) or ``row_target_gap_sums`` (True)."""

    def codegen(context, builder, signature, args):
        lanes = VECTOR_BYTES // 8
        vector_type = ir.VectorType(ir.DoubleType(), lanes)
        zeros = ir.Constant(vector_type, [0.0] * lanes)
        rows = [signature.args[0]] + ([signature.args[1]] if probabilities else [])
        arrays = [context.make_array(kind)(context, builder, value) for kind, value in zip(rows, args)]
        weight_index = len(rows)
        weights = context.make_array(signature.args[weight_index])(context, builder, args[weight_index]) if weighted else None
        anchor = _splat(builder, args[weight_index + 1], vector_type)
        if probabilities:
            keep, uniform = (_splat(builder, value, vector_type) for value in args[weight_index + 2 : weight_index + 4])
        length = builder.extract_value(arrays[0].shape, 0)
        loaded_types = [ir.VectorType(context.get_value_type(kind.dtype), lanes) for kind in rows]
        summed_weights = weighted or probabilities

        def widened(vector):
            return vector if vector.type == vector_type else builder.fpext(vector, vector_type)

        def step(loaded, carried):
            # no ``contract``: no product is fused into a sum, here or in the scalar twin
            value, probability, weight = loaded
            gap = builder.fsub(anchor, value, flags=_EXACT)
            if not summed_weights:
                return [builder.fadd(carried[0], gap, flags=_EXACT)]
            if probabilities:  # tw_j = w_j ((1 - eps) p_j + eps / C)
                target = builder.fadd(builder.fmul(keep, probability, flags=_EXACT), uniform, flags=_EXACT)
                weight = builder.fmul(weight, target, flags=_EXACT) if weighted else target
            # tw_j (anchor - z_j), and 0 where tw_j = 0 (a masked logit of weight 0); a NaN
            # weight is not 0 (an unordered comparison): its term is NaN, as in the scalar twin
            product = builder.fmul(weight, gap, flags=_EXACT)
            term = builder.select(builder.fcmp_unordered("!=", weight, zeros), product, zeros)
            return [builder.fadd(carried[0], term, flags=_EXACT), builder.fadd(carried[1], weight, flags=_EXACT)]

        def load(index, u):
            position = builder.add(index, ir.Constant(_I64, u * lanes))
            loaded = [widened(builder.load(_vector_pointer(builder, array.data, position, kind), align=4))
                      for array, kind in zip(arrays, loaded_types)]
            weight = builder.load(_vector_pointer(builder, weights.data, position, vector_type), align=8) if weighted else None
            return (loaded[0], loaded[1] if probabilities else None, weight)

        per = 2 if summed_weights else 1

        def steps(loads, carried):
            return [value for u in range(_ACCUMULATORS) for value in step(loads[u], carried[per * u : per * u + per])]

        group = lanes * _ACCUMULATORS
        grouped = builder.and_(length, ir.Constant(_I64, -group))
        index, carried = _counted_loop(
            builder, ir.Constant(_I64, 0), grouped, group, [zeros] * (per * _ACCUMULATORS),
            lambda i, carried: steps([load(i, u) for u in range(_ACCUMULATORS)], carried),
        )
        # the last partial group: its lanes past the end are zero terms (the value the anchor,
        # a gap of 0; the weight 0)
        tails = []
        for u in range(_ACCUMULATORS):
            position = builder.add(index, ir.Constant(_I64, u * lanes))
            loaded = []
            for array, kind in zip(arrays, loaded_types):
                vector, mask = _load_tail(builder, array.data, length, position, kind, ir.Constant(kind, [0.0] * lanes))
                loaded.append(widened(vector))
            value = builder.select(mask, loaded[0], anchor)
            weight = _load_tail(builder, weights.data, length, position, vector_type, zeros)[0] if weighted else None
            tail = step((value, loaded[1] if probabilities else None, weight), [zeros] * per)
            # the tail's terms on their own, masked, then added: a padded lane adds exactly 0
            masked = [builder.select(mask, term, zeros) for term in tail]
            tails.append([builder.fadd(carried[per * u + c], masked[c], flags=_EXACT) for c in range(per)])
        carried = [value for tail in tails for value in tail]
        sums = []
        for column in range(per):
            # the 32 logical lanes (accumulator u, lane k: 8 u + k) halved: lane L + L + 16,
            # then + 8 (the accumulators), then + 4, + 2, + 1 inside the vector
            totals = carried[column::per]
            while len(totals) > 1:
                half = len(totals) // 2
                totals = [builder.fadd(totals[u], totals[u + half], flags=_EXACT) for u in range(half)]
            total = totals[0]
            width = lanes
            while width > 1:
                width //= 2
                total = builder.fadd(builder.shuffle_vector(total, total, _indices(width)),
                                     builder.shuffle_vector(total, total, _indices(width, width)), flags=_EXACT)
            sums.append(builder.extract_element(total, ir.Constant(_I32, 0)))
        if not summed_weights:
            sums.append(builder.uitofp(length, ir.DoubleType()))
        return context.make_tuple(builder, signature.return_type, sums)

    return codegen


def _weights_type(weights):
    """(whether weighted, whether the type is accepted): None, or a C-contiguous float64 row."""
    if isinstance(weights, types.NoneType):
        return False, True
    return True, contiguous_float_row(weights) and weights.dtype == types.float64


@intrinsic
def row_gap_sums(typingctx, values, weights, anchor):
    """(sum_j w_j (anchor - z_j), sum_j w_j) over a C-contiguous float row ``values`` (explicit vector IR).

    ``weights`` a C-contiguous float64 row of the same length, or None for w = 1 (the
    second sum is then the length).  A term whose w_j is 0 is 0 (a masked logit of weight
    0 adds nothing).

    The sums run in float64 on 32 logical lanes, lane L taking the terms j = L mod 32 (the
    row padded with zero terms to one more group of 32), then joined by halving (lane L with
    L + 16, + 8, + 4, + 2, + 1): an order fixed here, whatever the caller.  Written on vectors
    because an order left to LLVM's vectorizer (``reassoc``) is not fixed: one function
    linked into two kernels was vectorized differently in each, and which copy ran depended
    on whether a kernel was compiled in the process or loaded from Numba's cache
    (``docs/performance.md``, "Bits that depended on the cache").  ``rows.gap_sums`` does
    the same operations in the same order for other layouts.
    """
    weighted, accepted = _weights_type(weights)
    if not (contiguous_float_row(values) and accepted and isinstance(anchor, types.Float)):
        return None
    return types.UniTuple(types.float64, 2)(values, weights, anchor), _gap_sums_codegen(False, weighted)


@intrinsic
def row_target_gap_sums(typingctx, values, probabilities, weights, anchor, keep, uniform):
    """``row_gap_sums`` with the target weights of class probabilities: tw_j = w_j (keep p_j + uniform).

    ``probabilities`` a C-contiguous row of the values' dtype; ``weights`` as in
    ``row_gap_sums`` (None: w = 1); keep = 1 - eps, uniform = eps / C.  The same lanes and
    order; tw_j is the rounded sum of the rounded product keep p_j and uniform, times w_j.
    """
    weighted, accepted = _weights_type(weights)
    scalars = all(isinstance(value, types.Float) for value in (anchor, keep, uniform))
    if not (contiguous_float_row(values) and contiguous_float_row(probabilities) and accepted and scalars):
        return None
    signature = types.UniTuple(types.float64, 2)(values, probabilities, weights, anchor, keep, uniform)
    return signature, _gap_sums_codegen(True, weighted)


def contiguous_float64_row(values):
    """Whether the Numba type ``values`` is a C-contiguous 1-D float64 array."""
    return contiguous_float_row(values) and values.dtype == types.float64


@intrinsic
def row_sum2(typingctx, values):
    """(high, low): sum(values) compensated, for a C-contiguous float64 row (explicit vector IR).

    ``row_dot2`` with the terms ``values[j]`` themselves (no product error).
    """
    if not contiguous_float64_row(values):
        return None
    return types.UniTuple(types.float64, 2)(values), _compensated_codegen(product=False)


@intrinsic
def row_dot2(typingctx, a, b):
    """(high, low): sum_j a_j b_j compensated, for C-contiguous float64 rows of one length.

    Ogita, Rump & Oishi's Dot2 ("Accurate sum and dot product", 2005) on 32 lanes (4
    vectors of 8): lane k takes the terms j = k mod 32, the row padded with zeros to
    one more group; each product is split exactly (p + e = a_j b_j, one FMA), added to
    the lane's sum by TwoSum, and the two errors go to the lane's compensation.  The
    lanes are then joined by halving (lane k with k + 16, + 8, + 4, + 2, + 1), each join
    a TwoSum whose error goes to the compensations.  high + low is the sum as if
    computed in twice the working precision and rounded: |error| <= u |sum| +
    gamma_n^2 sum |a_j b_j|.  ``rows._strided_dot2`` does the same operations in the
    same order for other layouts (bit for bit).  Four accumulators: one vector's
    TwoSum chain (its sum's latency each step) made the in-cache row of 10^6 classes 30%
    slower than the plain sum.
    """
    if not (contiguous_float64_row(a) and contiguous_float64_row(b)):
        return None
    return types.UniTuple(types.float64, 2)(a, b), _compensated_codegen(product=True)


# ---- streamed writes ------------------------------------------------------------------------


def _load_masked(builder, data, index, mask, vector_type, padding):
    """data[index + lane] for the lanes of ``mask``, ``padding``'s lanes elsewhere."""
    pointer_type = ir.PointerType(vector_type)
    load = _declared(builder.module, f"llvm.masked.load.{_mangled(vector_type)}.p0",
                     ir.FunctionType(vector_type, [pointer_type, _I32, mask.type, vector_type]))
    alignment = ir.Constant(_I32, _element_bytes(vector_type))
    return builder.call(load, [_vector_pointer(builder, data, index, vector_type), alignment, mask, padding])


def _lanes_below(builder, count, lanes):
    """The mask of the lanes k < ``count`` (an i64 in [0, lanes])."""
    limit = _splat(builder, builder.trunc(count, _I32), ir.VectorType(_I32, lanes))
    return builder.icmp_signed("<", _indices(lanes), limit)


def _streamed(builder, destination, length, lanes, value_at, ahead=None):
    """destination[j] = value_at(index, mask)[j - index] over a float row, the whole aligned
    vectors stored non-temporally.

    ``value_at(index, mask)`` emits the vector of the elements from ``index`` (``mask``: the
    lanes inside the row, or None for a whole vector).  The lanes before the first
    ``VECTOR_BYTES``-aligned address and after the last whole vector are stored by masked
    stores; every vector between is a whole cache line, stored with ``!nontemporal``: it
    goes to memory without being read into the cache first.  ``ahead``: None, or
    (ahead_length, prefetch): ``prefetch(index)`` is emitted before each whole vector whose
    index is below ``ahead_length`` (the block the caller reads next, as
    ``_whole_vectors_hinted`` does).
    """
    element_bytes = VECTOR_BYTES // lanes
    address = builder.ptrtoint(destination, _I64)
    # elements before the first aligned address (the row's elements are element-aligned)
    misaligned = builder.and_(builder.sub(ir.Constant(_I64, 0), address), ir.Constant(_I64, VECTOR_BYTES - 1))
    head = builder.udiv(misaligned, ir.Constant(_I64, element_bytes))
    head = builder.select(builder.icmp_signed("<", head, length), head, length)
    zero = ir.Constant(_I64, 0)
    with builder.if_then(builder.icmp_signed(">", head, zero)):
        mask = _lanes_below(builder, head, lanes)
        _store_tail(builder, value_at(zero, mask), destination, zero, mask)
    whole = builder.add(head, builder.and_(builder.sub(length, head), ir.Constant(_I64, -lanes)))
    streaming = builder.module.add_metadata([ir.Constant(_I32, 1)])

    def step(index, carried, prefetching=False):
        if prefetching:
            ahead[1](index)
        store = builder.store(value_at(index, None), _vector_pointer(builder, destination, index, ir.VectorType(
            destination.type.pointee, lanes)), align=VECTOR_BYTES)
        store.set_metadata("nontemporal", streaming)
        return []

    index = head
    if ahead is not None:
        # the whole vectors below the block ahead's length (a multiple of lanes from head), then the rest
        hinted = builder.add(head, builder.and_(builder.sub(ahead[0], head), ir.Constant(_I64, -lanes)))
        hinted = builder.select(builder.icmp_signed("<", hinted, whole), hinted, whole)
        index, _ = _counted_loop(builder, index, hinted, lanes, [],
                                 lambda i, carried: step(i, carried, prefetching=True))
    index, _ = _counted_loop(builder, index, whole, lanes, [], step)
    with builder.if_then(builder.icmp_signed("<", index, length)):
        mask = _lanes_below(builder, builder.sub(length, index), lanes)
        _store_tail(builder, value_at(index, mask), destination, index, mask)


def _store_fence(builder):
    """Orders the non-temporal stores before every later store, so that the rows a thread
    streamed are visible to the others when the parallel loop ends: ``sfence`` on x86, whose
    ordinary fences leave non-temporal stores unordered; a release fence elsewhere."""
    if (builder.module.triple or "").startswith(("x86_64", "i686", "i386")):
        fence = _declared(builder.module, "llvm.x86.sse.sfence", ir.FunctionType(ir.VoidType(), []))
        builder.call(fence, [])
    else:
        builder.fence("release")


def _streamed_row_codegen(combine):
    """The codegen of a streamed float32 row write destination[j] = combine(source[j], a, b)
    (``_streamed``), for the intrinsics' arguments (source, destination, a, b), a and b
    float32 scalars; ``combine(builder, loaded, a_vector, b_vector)`` emits the vector."""

    def codegen(context, builder, signature, args):
        lanes = VECTOR_BYTES // 4
        vector_type = ir.VectorType(ir.FloatType(), lanes)
        source = context.make_array(signature.args[0])(context, builder, args[0])
        target = context.make_array(signature.args[1])(context, builder, args[1])
        a_vector = _splat(builder, args[2], vector_type)
        b_vector = _splat(builder, args[3], vector_type)

        def value_at(index, mask):
            if mask is None:
                loaded = builder.load(_vector_pointer(builder, source.data, index, vector_type), align=4)
            else:  # the lanes past the row compute on a (finite) and are not stored
                loaded = _load_masked(builder, source.data, index, mask, vector_type, a_vector)
            return combine(builder, loaded, a_vector, b_vector)

        _streamed(builder, target.data, builder.extract_value(source.shape, 0), lanes, value_at)
        _store_fence(builder)
        return context.get_dummy_value()

    return codegen


def _streamed_row_signature(source, destination, a, b):
    """The signature of a streamed float32 row write, or None for other arguments."""
    if not (contiguous_float_row(source) and contiguous_float_row(destination)
            and source.dtype == destination.dtype == a == b == types.float32):
        return None
    return types.none(source, destination, a, b)


def _shifted_log(builder, loaded, shift, log_total):
    return builder.fsub(builder.fsub(loaded, shift, flags=_FLAGS), log_total, flags=_FLAGS)


def _scaled_pair(builder, loaded, high, low):
    fused = _declared(builder.module, f"llvm.fma.{_mangled(loaded.type)}", ir.FunctionType(loaded.type, [loaded.type] * 3))
    return builder.call(fused, [loaded, high, builder.fmul(loaded, low, flags=_FLAGS)])


@intrinsic
def row_shifted_log32_stream(typingctx, values, destination, shift, log_total):
    """destination[j] = (values[j] - shift) - log_total in float32, streamed (``_streamed``).

    For C-contiguous float32 rows of one length: the operations of the scalar loop of
    ``_softmax._write_shifted_log``, bit for bit (two float32 subtractions, no product).
    """
    signature = _streamed_row_signature(values, destination, shift, log_total)
    return None if signature is None else (signature, _streamed_row_codegen(_shifted_log))


@intrinsic
def row_scaled32_stream(typingctx, source, destination, high, low):
    """destination[j] = fma(e, high, e low) for e = source[j] in float32, streamed (``_streamed``).

    For C-contiguous float32 rows of one length: the operations of the scalar loop of
    ``rows.scale_shift_in_place`` without a shift (softmax's scaling), bit for bit.
    """
    signature = _streamed_row_signature(source, destination, high, low)
    return None if signature is None else (signature, _streamed_row_codegen(_scaled_pair))


@intrinsic
def row_exp_product_difference32_stream(typingctx, y, dy, destination, total, ahead_y, ahead_dy):
    """``row_exp_product_difference32`` streamed (``_streamed``): its elements bit for bit, and
    its prefetch of the start of ``ahead_y`` and ``ahead_dy``."""
    if not _exp_product_difference_rows(y, dy, destination, total, ahead_y, ahead_dy):
        return None

    def codegen(context, builder, signature, args):
        lanes, narrow, (source, upstream, target, following_y), differences, prefetch = _exp_product_difference_parts(
            context, builder, signature, args)
        zeros = ir.Constant(narrow, [0.0] * lanes)

        def value_at(index, mask):
            if mask is None:
                loaded = [builder.load(_vector_pointer(builder, array.data, index, narrow), align=4)
                          for array in (source, upstream)]
            else:  # the lanes past the row load 0 and are not stored
                loaded = [_load_masked(builder, array.data, index, mask, narrow, zeros) for array in (source, upstream)]
            return differences(*loaded)

        _streamed(builder, target.data, builder.extract_value(source.shape, 0), lanes, value_at,
                  ahead=(builder.extract_value(following_y.shape, 0), prefetch))
        _store_fence(builder)
        return context.get_dummy_value()

    return types.none(y, dy, destination, total, ahead_y, ahead_dy), codegen
