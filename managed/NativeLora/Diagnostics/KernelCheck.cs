using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.Quantization;
using NativeLora.Tensors;

namespace NativeLora.Diagnostics;

/// <summary>One compared output of a kernel check: its error against the float64 reference and the bound it must stay under.</summary>
public readonly record struct KernelCheckResult(string Family, string Name, double Error, double Tolerance, string Measure = "rel.err")
{
    /// <summary>NaN compares false and a non-finite output gives +∞, so NaN never passes.</summary>
    public bool Passed => Error < Tolerance;
}

/// <summary>
/// `nativelora selfcheck --kernels`: every kernel family, forward and backward, run on the device with the
/// variant that device uses (CUDA: the ILGPU shared-memory and shuffle kernels; CPU: the host SIMD
/// kernels, and ILGPU's barrier-free ones where a family has no host kernel yet) and compared with a float64
/// reference of the same rounded random inputs. Outputs are poisoned (NaN) first, so an element a kernel
/// forgets to write fails. Bounds are DESIGN.md's: f32 elementwise and norms 1e-5, f32 chains through GEMMs
/// (attention, LoRA) 1e-4, bf16/f16 operands 1e-2; discrete outputs (NF4 codes) must match exactly wherever the
/// reference is not within rounding of a tie. The references are the kernel families' own (<c>Kernels.X.Reference</c>),
/// which tests/ uses too and checks against finite differences where there is a backward; the elementwise sums are
/// written in place and the casts' reference is <see cref="DTypeInfo.Round"/>.
/// </summary>
public sealed class KernelCheck
{
    public static readonly string[] Families =
        { "embedding", "rmsnorm", "rope", "attention", "swiglu", "elementwise", "cross-entropy", "lora", "dora", "multi-lora", "nf4", "nf4-matmul", "adamw" };

    private readonly ComputeDevice _dev;
    private readonly KernelSet _k;
    private readonly Random _rng;
    private readonly Action<string, float[]>? _tamper;
    private readonly List<KernelCheckResult> _results = new();
    private string _family = "";

    private KernelCheck(ComputeDevice device, KernelSet kernels, int seed, Action<string, float[]>? tamper)
    {
        _dev = device;
        _k = kernels;
        _rng = new Random(seed);
        _tamper = tamper;
    }

    /// <summary>
    /// Runs the named families (all by default) with inputs drawn from seed, reporting each result as it comes.
    /// For tests: kernels picks another variant on the same device (the GPU kernels on the CPU accelerator), and
    /// tamper may change an output after it is read back and before it is compared (a wrong result must be caught).
    /// </summary>
    public static IReadOnlyList<KernelCheckResult> Run(ComputeDevice device, int seed, IEnumerable<string>? families = null,
        Action<KernelCheckResult>? onResult = null, KernelSet? kernels = null, Action<string, float[]>? tamper = null)
    {
        var chosen = (families ?? Families).ToList();
        foreach (var f in chosen)
            if (!Families.Contains(f)) throw new ArgumentException($"unknown kernel family '{f}' (known: {string.Join(", ", Families)})");
        var check = new KernelCheck(device, kernels ?? device.Kernels, seed, tamper);
        foreach (var family in chosen)
        {
            check._family = family;
            int before = check._results.Count;
            try
            {
                check.RunFamily(family);
            }
            catch (Exception e)
            {
                // a kernel that fails to compile or launch is a failed check; the other families still run
                check._results.Add(new KernelCheckResult(family, $"threw {e.GetType().Name}: {e.Message}", double.PositiveInfinity, 0));
            }
            for (int i = before; i < check._results.Count; i++) onResult?.Invoke(check._results[i]);
        }
        return check._results;
    }

    private void RunFamily(string family)
    {
        // bf16 wherever the device's variant takes it: the CPU attention variant computes in f32 only
        var floats = new[] { DType.F32, DType.BF16 };
        var attention = _k.GpuVariants ? floats : new[] { DType.F32 };
        switch (family)
        {
            case "embedding": foreach (var t in floats) Embedding(t); break;
            case "rmsnorm": foreach (var t in floats) RmsNorm(t); break;
            case "rope": foreach (var t in floats) Rope(t); break;
            case "attention":
                foreach (var t in attention) { Attention(t, 2, 77, 4, 2, 64); Attention(t, 1, 40, 2, 1, 128); Decode(t); }
                break;
            case "swiglu": foreach (var t in floats) SwiGlu(t); break;
            case "elementwise":
                foreach (var t in new[] { DType.F32, DType.BF16, DType.F16 }) Elementwise(t);
                Casts();
                break;
            case "cross-entropy": foreach (var t in floats) CrossEntropy(t); break;
            case "lora":
                foreach (var t in floats) { AdaptedLinear(t, 0f, dora: false, rslora: false, withBias: true); AdaptedLinear(t, 0.15f, dora: false, rslora: true, withBias: false); }
                break;
            case "dora":
                foreach (var t in floats) { AdaptedLinear(t, 0f, dora: true, rslora: false, withBias: true); AdaptedLinear(t, 0.2f, dora: true, rslora: false, withBias: false); }
                break;
            case "multi-lora": foreach (var t in floats) MultiLoraRows(t); break;
            case "nf4": foreach (var t in floats) Nf4(t); break;
            case "nf4-matmul": foreach (var t in floats) { Nf4Matmul(t, 1, 130, 33); Nf4Matmul(t, 37, 200, 70); } break;
            case "adamw": AdamW32(); AdamW8(); break;
        }
    }

    // ---- comparison and inputs ----

    private static double Tol(DType t, double f32) => t == DType.F32 ? f32 : 1e-2;

    private void Compare(string name, Tensor output, double[] reference, double tolerance) => Compare(name, output.ToFloatArray(), reference, tolerance);

    private void Compare(string name, float[] output, double[] reference, double tolerance)
    {
        _tamper?.Invoke(name, output);
        _results.Add(new KernelCheckResult(_family, name, RelativeError(output, reference), tolerance));
    }

    /// <summary>‖out − ref‖ / ‖ref‖; +∞ when any output is NaN or infinite.</summary>
    public static double RelativeError(ReadOnlySpan<float> output, ReadOnlySpan<double> reference)
    {
        if (output.Length != reference.Length) throw new ArgumentException($"output has {output.Length} elements, the reference {reference.Length}");
        double num = 0, den = 0;
        for (int i = 0; i < output.Length; i++)
        {
            if (!float.IsFinite(output[i])) return double.PositiveInfinity;
            double d = output[i] - reference[i];
            num += d * d;
            den += reference[i] * reference[i];
        }
        return den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
    }

    /// <summary>Uniform in ±scale, already rounded to t, so the reference sees exactly what the device sees.</summary>
    private float[] Rand(DType t, long n, double scale = 1)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = t.Round((float)((_rng.NextDouble() * 2 - 1) * scale));
        return a;
    }

    private Tensor Up(DType t, float[] data, params int[] shape)
    {
        var x = _dev.Allocate(t, shape);
        x.CopyFromFloats(data);
        return x;
    }

    /// <summary><see cref="Rand"/> values of the shape's size uploaded as a tensor: the device's input, and in data the reference's.</summary>
    private Tensor RandomInput(DType t, int[] shape, out float[] data, double scale = 1)
    {
        data = Rand(t, Tensor.CountElements(shape), scale);
        return Up(t, data, shape);
    }

    private Tensor Ints(int[] data)
    {
        var x = _dev.Allocate(DType.I32, data.Length);
        x.CopyFrom<int>(data);
        return x;
    }

    private Tensor Poisoned(DType t, params int[] shape)
    {
        var x = _dev.Allocate(t, shape);
        x.Poison();
        return x;
    }

    private Tensor Zeros(params int[] shape)
    {
        var x = _dev.Allocate(DType.F32, shape);
        ElementwiseOp.Zero(_k, x);
        return x;
    }

    private static double[] D(float[] a) => Array.ConvertAll(a, v => (double)v);

    // ---- families ----

    private void Embedding(DType t)
    {
        int vocab = 37, tokens = 61, dim = 1000;
        var ids = Enumerable.Range(0, tokens).Select(_ => _rng.Next(vocab)).ToArray();
        ids[3] = ids[7] = ids[40] = 5; // repeated ids must accumulate in the backward
        using var tTable = RandomInput(t, [vocab, dim], out var table);
        using var tdOut = RandomInput(t, [tokens, dim], out var dOut);
        using var tIds = Ints(ids);
        using var tOut = Poisoned(t, tokens, dim);
        using var tdTable = Zeros(vocab, dim);
        EmbeddingOp.Forward(_k, tIds, ids, tTable, tOut);
        EmbeddingOp.Backward(_k, tIds, tdOut, tdTable);
        var (outRef, dRef) = Kernels.Embedding.Reference.Run(ids, D(table), D(dOut), vocab, dim);
        Compare($"lookup {t.Name()}", tOut, outRef, 1e-7); // an exact copy
        Compare($"backward scatter-add {t.Name()}", tdTable, dRef, 1e-5);
    }

    private void RmsNorm(DType t)
    {
        int rows = 33, dim = 1031;
        const float eps = 1e-5f;
        using var tx = RandomInput(t, [rows, dim], out var x, scale: 2);
        using var tw = RandomInput(t, [dim], out var w);
        using var tdy = RandomInput(t, [rows, dim], out var dy);
        using var ty = Poisoned(t, rows, dim);
        using var trstd = Poisoned(DType.F32, rows);
        using var tdx = Poisoned(t, rows, dim);
        using var tdw = Zeros(dim);
        RmsNormOp.Forward(_k, tx, tw, ty, trstd, eps);
        RmsNormOp.Backward(_k, tx, tw, tdy, trstd, tdx, tdw);
        var rstd = new double[rows];
        var y = Kernels.RmsNorm.Reference.Forward(D(x), D(w), rows, dim, eps, rstd);
        var (dx, dw) = Kernels.RmsNorm.Reference.Backward(D(x), D(w), D(dy), rows, dim, eps);
        Compare($"forward y {t.Name()}", ty, y, Tol(t, 1e-5));
        Compare($"forward rstd {t.Name()}", trstd, rstd, 1e-5);
        Compare($"backward dx {t.Name()}", tdx, dx, Tol(t, 1e-5));
        Compare($"backward dw {t.Name()}", tdw, dw, Tol(t, 1e-5));
    }

    private void Rope(DType t)
    {
        int heads = 3, hd = 128, half = hd / 2, maxPos = 64;
        var pos = new[] { 0, 1, 2, 3, 4, 0, 1, 2, 61, 62, 63, 5, 6 }; // packed sequences restart at 0
        int tokens = pos.Length;
        var scaling = new RopeScaling(RopeScalingType.Llama3, Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 16);
        var (cos, sin) = Kernels.Rope.BuildTable(hd, maxPos, 500000, scaling);
        using var tx = RandomInput(t, [tokens, heads * hd], out var x);
        using var tdy = RandomInput(t, [tokens, heads * hd], out var dy);
        using var tcos = Up(DType.F32, cos, maxPos, half);
        using var tsin = Up(DType.F32, sin, maxPos, half);
        using var tpos = Ints(pos);
        using var ty = Poisoned(t, tokens, heads * hd);
        using var tdx = Poisoned(t, tokens, heads * hd);
        RopeOp.Forward(_k, new(tx, ty, heads), null, tpos, tcos, tsin, hd);
        RopeOp.Backward(_k, new(tdy, tdx, heads), null, tpos, tcos, tsin, hd);
        var inv = Kernels.Rope.InverseFrequencies(hd, 500000, scaling);
        Compare($"forward llama3-scaled {t.Name()}", ty, Kernels.Rope.Reference.Rotate(D(x), pos, tokens, heads, hd, inv, inverse: false), Tol(t, 1e-5));
        Compare($"backward {t.Name()}", tdx, Kernels.Rope.Reference.Rotate(D(dy), pos, tokens, heads, hd, inv, inverse: true), Tol(t, 1e-5));
    }

    private void Attention(DType t, int B, int T, int H, int KV, int hd)
    {
        var s = new AttentionShape(B, T, H, KV, hd);
        // row 0: three packed sequences; row 1: padding (-1) at the end; a single row is plain causal
        var seg = new int[B * T];
        for (int b = 0; b < B; b++)
            for (int i = 0; i < T; i++)
                seg[b * T + i] = B == 1 ? 0 : b == 0 ? (i < T / 3 ? 0 : i < T - 2 ? 1 : 2) : (i < T - 5 ? 0 : -1);
        using var tq = RandomInput(t, [B * T, H * hd], out var q, scale: 2);
        using var tk = RandomInput(t, [B * T, KV * hd], out var kk, scale: 2);
        using var tv = RandomInput(t, [B * T, KV * hd], out var v);
        using var tdO = RandomInput(t, [B * T, H * hd], out var dO);
        using var tseg = Ints(seg);
        using var to = Poisoned(t, B * T, H * hd);
        using var tlse = Poisoned(DType.F32, B * H * T);
        using var tdq = Poisoned(t, B * T, H * hd);
        using var tdk = Poisoned(t, B * T, KV * hd);
        using var tdv = Poisoned(t, B * T, KV * hd);
        AttentionOp.Forward(_k, tq, tk, tv, tseg, to, tlse, s);
        AttentionOp.Backward(_k, tq, tk, tv, tseg, to, tlse, tdO, tdq, tdk, tdv, s);

        // float64: the reference the tests check against finite differences (Kernels/Attention.cs)
        var r = Kernels.Attention.Reference.Run(D(q), D(kk), D(v), seg, D(dO), B, T, T, H, KV, hd);
        string what = $"{t.Name()} B{B} T{T} H{H}/{KV} hd{hd}";
        Compare($"forward o {what}", to, r.O, Tol(t, 1e-4));
        Compare($"backward dq {what}", tdq, r.Dq, Tol(t, 1e-4));
        Compare($"backward dk {what}", tdk, r.Dk, Tol(t, 1e-4));
        Compare($"backward dv {what}", tdv, r.Dv, Tol(t, 1e-4));
    }

    // Generation's path: KV-cache row writes into pages, then one query per sequence against its cached positions
    // read through its page table (pages scattered over the pool, so a kernel that ignores the table fails).
    private void Decode(DType t)
    {
        int B = 2, maxT = 48, pageSize = 16, maxPages = maxT / pageSize, H = 4, KV = 2, hd = 64, width = KV * hd;
        var lengths = new[] { 17, maxT };
        var table = new[] { 4, 1, 5, 0, 3, 2 }; // [B, maxPages]
        int Slot(int b, int i) => table[b * maxPages + i / pageSize] * pageSize + i % pageSize;
        var rows = Enumerable.Range(0, B).SelectMany(b => Enumerable.Range(0, lengths[b]).Select(i => Slot(b, i))).Reverse().ToArray();
        var kSrc = Rand(t, (long)rows.Length * width, 2);
        var vSrc = Rand(t, (long)rows.Length * width);
        using var tq = RandomInput(t, [B, H * hd], out var q, scale: 2);
        // unwritten cache rows stay NaN: a kernel that reads past a sequence's length fails
        using var kCache = Poisoned(t, B * maxT, width);
        using var vCache = Poisoned(t, B * maxT, width);
        using var tRows = Ints(rows);
        using (var tk = Up(t, kSrc, rows.Length, width)) KvCacheOp.Write(_k, tk, kCache, tRows);
        using (var tv = Up(t, vSrc, rows.Length, width)) KvCacheOp.Write(_k, tv, vCache, tRows);
        using var tLen = Ints(lengths);
        using var tTableFlat = Ints(table);
        var tTable = tTableFlat.Reshape(B, maxPages);
        using var to = Poisoned(t, B, H * hd);
        var config = new ModelConfig { NumHeads = H, NumKvHeads = KV, HeadDim = hd, HiddenSize = H * hd };
        KvCacheOp.Attend(_k, tq, kCache, vCache, tLen, tTable, to, config, pageSize);

        var kc = new double[B * maxT * width];
        var vc = new double[B * maxT * width];
        for (int r = 0; r < rows.Length; r++)
            for (int c = 0; c < width; c++) { kc[rows[r] * width + c] = kSrc[r * width + c]; vc[rows[r] * width + c] = vSrc[r * width + c]; }
        var written = kCache.ToFloatArray();
        var gathered = new float[rows.Length * width];
        var expected = new double[rows.Length * width];
        for (int r = 0; r < rows.Length; r++)
            for (int c = 0; c < width; c++) { gathered[r * width + c] = written[rows[r] * width + c]; expected[r * width + c] = kSrc[r * width + c]; }
        Compare($"kv-cache row write {t.Name()}", gathered, expected, 1e-7); // an exact copy
        // each sequence's cached rows gathered in position order, its one query after them: plain attention (Kernels.Attention.Reference)
        var o = new double[B * H * hd];
        for (int b = 0; b < B; b++)
        {
            double[] Gather(double[] cache) => Enumerable.Range(0, lengths[b]).SelectMany(i => cache.AsSpan(Slot(b, i) * width, width).ToArray()).ToArray();
            Kernels.Attention.Reference.Run(D(q.AsSpan(b * H * hd, H * hd).ToArray()), Gather(kc), Gather(vc), new int[lengths[b]], null, 1, 1, lengths[b], H, KV, hd).O
                .CopyTo(o, b * H * hd);
        }
        Compare($"decode (KV cache) {t.Name()} lengths {lengths[0]},{lengths[1]}", to, o, Tol(t, 1e-5));
    }

    private void SwiGlu(DType t)
    {
        int n = 4099;
        using var tg = RandomInput(t, [n], out var g, scale: 6);
        using var tu = RandomInput(t, [n], out var u, scale: 2);
        using var tdh = RandomInput(t, [n], out var dh);
        using var th = Poisoned(t, n);
        using var tdg = Poisoned(t, n);
        using var tdu = Poisoned(t, n);
        SwiGluOp.Forward(_k, tg, tu, th);
        SwiGluOp.Backward(_k, tg, tu, tdh, tdg, tdu);
        var h = Kernels.SwiGlu.Reference.Forward(D(g), D(u));
        var (dg, du) = Kernels.SwiGlu.Reference.Backward(D(g), D(u), D(dh));
        Compare($"forward {t.Name()}", th, h, Tol(t, 1e-5));
        Compare($"backward dgate {t.Name()}", tdg, dg, Tol(t, 1e-5));
        Compare($"backward dup {t.Name()}", tdu, du, Tol(t, 1e-5));
    }

    private void Elementwise(DType t)
    {
        int n = 5003, rows = 13, cols = 257;
        using var ta = RandomInput(t, [n], out var a);
        using var tb = RandomInput(t, [n], out var b);
        using var tc = Poisoned(t, n);
        ElementwiseOp.Add(_k, ta, tb, tc);
        var sum = a.Zip(b, (x, y) => (double)x + y).ToArray();
        Compare($"add {t.Name()}", tc, sum, Tol(t, 1e-7));
        ElementwiseOp.AddInto(_k, ta, tb);
        Compare($"add-into (residual) {t.Name()}", ta, sum, Tol(t, 1e-7));
        ElementwiseOp.Fill(_k, tc, 0.375f);
        Compare($"fill {t.Name()}", tc, Enumerable.Repeat(0.375, n).ToArray(), 1e-7);

        using var ty = RandomInput(t, [rows, cols], out var y);
        using var tbias = RandomInput(t, [cols], out var bias);
        using var tdb = Zeros(cols);
        ElementwiseOp.AddBias(_k, ty, tbias);
        var yOut = ty.ToFloatArray();
        ElementwiseOp.BiasGrad(_k, ty, tdb);
        var yRef = new double[rows * cols];
        var dbRef = new double[cols];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) { yRef[r * cols + c] = (double)y[r * cols + c] + bias[c]; dbRef[c] += yOut[r * cols + c]; }
        Compare($"bias add {t.Name()}", yOut, yRef, Tol(t, 1e-7));
        Compare($"bias grad (column sums) {t.Name()}", tdb, dbRef, 1e-5);
    }

    private void Casts()
    {
        var types = new[] { DType.F32, DType.BF16, DType.F16 };
        foreach (var from in types)
            foreach (var to in types)
            {
                using var src = RandomInput(from, [1029], out var x, scale: 100); // within f16's range
                using var dst = Poisoned(to, x.Length);
                ElementwiseOp.Cast(_k, src, dst);
                Compare($"cast {from.Name()}->{to.Name()}", dst, x.Select(v => (double)to.Round(v)).ToArray(), 1e-7); // round to nearest even, exactly
            }
    }

    private void CrossEntropy(DType t)
    {
        int n = 67, d = 64, vocab = 1001, chunkRows = 32;
        using var th = RandomInput(t, [n, d], out var h, scale: 3);
        using var tw = RandomInput(t, [vocab, d], out var w);
        var labels = Enumerable.Range(0, n).Select(i => i % 5 == 0 ? -100 : _rng.Next(vocab)).ToArray();
        using var tdh = Poisoned(t, n, d);
        using var tdw = _dev.Allocate(t, vocab, d);
        ElementwiseOp.Zero(_k, tdw);
        var (loss, _) = CrossEntropyOp.ForwardBackward(_k, th, tw, labels, tdh, tdw, chunkRows);
        var (lossRef, dh, dw) = Kernels.CrossEntropy.Reference.Run(D(h), D(w), labels, n, d, vocab);
        Compare($"loss {t.Name()}", new[] { (float)loss }, new[] { lossRef }, Tol(t, 1e-5));
        Compare($"dhidden {t.Name()}", tdh, dh, Tol(t, 1e-5));
        Compare($"dweight {t.Name()}", tdw, dw, Tol(t, 1e-5));
    }

    // A linear layer with a LoRA (or DoRA) adapter, forward and backward, with the dropout masks of Kernels.Lora.Keep
    // (on CUDA the dropout is fused into the low-rank products). DoRA's norm is detached in the backward, as in PEFT.
    private void AdaptedLinear(DType t, float dropout, bool dora, bool rslora, bool withBias)
    {
        int n = 37, inF = 96, outF = 80, r = 8;
        var cfg = new LoraConfig { R = r, Alpha = 16, Dropout = dropout, UseRslora = rslora, UseDora = dora };
        using var tx = RandomInput(t, [n, inF], out var x);
        using var tw = RandomInput(t, [outF, inF], out var w0, scale: 0.3);
        var bias = withBias ? Rand(t, outF, 0.5) : null;
        var a = Rand(t, r * inF, 0.5);
        var bB = Rand(t, outF * r, 0.5); // non-zero B, so every path carries signal
        using var tdy = RandomInput(t, [n, outF], out var dy);
        var mag = dora ? Rand(DType.F32, outF).Select(v => 1f + Math.Abs(v)).ToArray() : null;

        using var module = new LoraModule(_dev, "check", inF, outF, r, cfg.Scale, dropout, t, dora) { Training = true, DropoutSeed = (ulong)_rng.NextInt64() };
        module.A.CopyFrom<float>(a);
        module.B.CopyFrom<float>(bB);
        if (mag != null) module.Magnitude!.CopyFrom<float>(mag);
        module.SyncCompute(_k);
        module.ZeroGradients(_k);
        using var tbias = bias != null ? Up(t, bias, outF) : null;
        var linear = new Linear("check", tw, tbias) { Lora = module };
        using var ty = Poisoned(t, n, outF);
        using var tdx = Poisoned(t, n, inF);
        using (var saved = linear.Forward(_k, tx, ty))
            linear.Backward(_k, tx, saved, tdy, tdx, accumulate: false);

        var re = Kernels.Lora.Reference.Run(D(x), D(w0), bias == null ? null : D(bias), D(a), D(bB), mag == null ? null : D(mag), D(dy),
            n, inF, outF, r, cfg.Scale, dropout, module.DropoutSeed);
        string what = $"{t.Name()} dropout {dropout}{(rslora ? " rslora" : "")}{(withBias ? " bias" : "")}";
        Compare($"forward y {what}", ty, re.Y, Tol(t, 1e-4));
        Compare($"backward dx {what}", tdx, re.Dx, Tol(t, 1e-4));
        Compare($"backward dA {what}", module.AGrad.ToArray<float>(), re.DA, Tol(t, 1e-4));
        Compare($"backward dB {what}", module.BGrad.ToArray<float>(), re.DB, Tol(t, 1e-4));
        if (dora) Compare($"backward dmagnitude {what}", module.MagnitudeGrad!.ToArray<float>(), re.Dm, Tol(t, 1e-4));
    }

    /// <summary>Codes must equal the reference's nearest codes, except where the reference is within rounding of a tie.</summary>
    private void CompareCodes(string name, byte[] codes, (int Index, bool Tie)[] reference)
    {
        int wrong = 0, counted = 0;
        for (int i = 0; i < codes.Length; i++)
        {
            if (reference[i].Tie) continue;
            counted++;
            if (codes[i] != reference[i].Index) wrong++;
        }
        _results.Add(new KernelCheckResult(_family, $"{name} ({codes.Length - counted} ties skipped)", (double)wrong / Math.Max(1, counted), 1e-12, "mismatch"));
    }

    // Serving's batched adapters: each row adds its own slot's low-rank product (−1: none, left untouched).
    private void MultiLoraRows(DType t)
    {
        int n = 9, inF = 70, outF = 33, slots = 3, r = 8;
        var slotOf = new[] { 0, -1, 2, 1, 2, -1, 0, 1, 2 };
        var scales = new[] { 2f, 0.5f, 0.25f };
        var ranks = new[] { r, 5, 2 }; // below the slot size: the (non-zero) padding must be ignored
        using var tx = RandomInput(t, [n, inF], out var x);
        using var ty = RandomInput(t, [n, outF], out var y0);
        var a = Rand(t, slots * r * inF);
        var b = Rand(t, slots * outF * r);
        using var bank = new LinearLoraSlots(_dev, t, slots, r, inF, outF);
        bank.A.CopyFromFloats(a);
        bank.B.CopyFromFloats(b);
        scales.CopyTo(bank.HostScales, 0);
        ranks.CopyTo(bank.HostRanks, 0);
        bank.Upload();
        using var ts = Ints(slotOf);
        MultiLoraOp.Forward(_k, bank, tx, ty, ts);
        var y = Kernels.MultiLora.Reference.Forward(D(x), D(y0), D(a), D(b), slotOf, D(scales), ranks, inF, outF, r);
        Compare($"per-row adapters {t.Name()} {n}x{inF}->{outF}", ty, y, Tol(t, 1e-5));
    }

    // QLoRA's fused base product: y = x·dequant(W)ᵀ and dx = dy·dequant(W) straight from the 4-bit state.
    private void Nf4Matmul(DType t, int n, int inF, int outF)
    {
        using var tw = RandomInput(t, [outF, inF], out _, scale: 0.05);
        using var state = Nf4Tensor.Quantize(_k, tw, doubleQuant: true);
        using var tx = RandomInput(t, [n, inF], out var x);
        using var tdy = RandomInput(t, [n, outF], out var dy);
        using var ty = Poisoned(t, n, outF);
        using var tdx = Poisoned(t, n, inF);
        Nf4MatmulOp.Forward(_k, state, tx, ty);
        Nf4MatmulOp.BackwardData(_k, state, tdy, tdx, accumulate: false);
        // the weights decoded on the host from the state's bytes (the dequantize kernel is checked by the nf4 family)
        var (y, dx) = Kernels.Nf4Matmul.Reference.Run(D(x), D(dy), state.ReferenceDequantize().Weights, n, inF, outF);
        Compare($"fused forward {t.Name()} {n}x{inF}->{outF}", ty, y, Tol(t, 1e-5));
        Compare($"fused backward dx {t.Name()} {n}x{inF}->{outF}", tdx, dx, Tol(t, 1e-5));
    }

    // bitsandbytes' NF4: blocks of 64, absmax per block, nearest of the 16 codes; double quantization of the absmax vector.
    private void Nf4(DType t)
    {
        int rows = 97, cols = 97, n = rows * cols;
        using var tw = RandomInput(t, [rows, cols], out var w, scale: 0.05);
        var (absmax, codes) = Kernels.Nf4.Reference.Quantize(D(w), Nf4Tensor.DefaultBlockSize, tie: 1e-6);
        using (var plain = Nf4Tensor.Quantize(_k, tw, doubleQuant: false))
        {
            Compare($"quantize absmax {t.Name()}", plain.Absmax.ToArray<float>(), absmax, 1e-7);
            var packed = plain.Packed.ToArray<byte>();
            CompareCodes($"quantize codes {t.Name()}", Enumerable.Range(0, n).Select(i => (byte)Kernels.Nf4.Reference.Nibble(packed, i)).ToArray(), codes);
        }
        using var state = Nf4Tensor.Quantize(_k, tw, doubleQuant: true);
        // double quantization: offset = mean(absmax) (an f32 reduction), then per 256 blocks a scale max|a − offset| and
        // 8-bit codes of the signed map. The scales and codes are checked against the device's f32 offset: a − offset
        // cancels, so the offset's own rounding would otherwise dominate their error.
        Compare($"double-quant offset {t.Name()}", new[] { state.Offset }, new[] { absmax.Average() }, 1e-5);
        var (scale, absmaxCodes) = Kernels.Nf4.Reference.DoubleQuantize(absmax, state.Offset, state.NestedQuantMap!.ToArray<float>(), state.NestedBlockSize, tie: 1e-6);
        Compare($"double-quant scales {t.Name()}", state.NestedAbsmax!.ToArray<float>(), scale, 1e-6);
        CompareCodes($"double-quant codes {t.Name()}", state.Absmax.ToArray<byte>(), absmaxCodes);
        // dequantize from the state the device wrote: w' = code[q]·(map[qa]·scale + offset)
        var (aRef, wRef) = state.ReferenceDequantize();
        using var restoredAbsmax = Poisoned(DType.F32, aRef.Length);
        state.DequantizeAbsmax(_k, restoredAbsmax);
        Compare($"dequantize absmax {t.Name()}", restoredAbsmax, aRef, 1e-6);
        foreach (var outType in new[] { DType.F32, t }.Distinct())
        {
            using var output = Poisoned(outType, rows, cols);
            state.Dequantize(_k, output);
            Compare($"dequantize {t.Name()} weight to {outType.Name()}", output, wRef, Tol(outType, 1e-6));
        }
    }

    private const float Lr = 1e-2f, Beta1 = 0.9f, Beta2 = 0.999f, Eps = 1e-8f, Wd = 0.01f, GradScale = 0.5f;

    // torch.optim.AdamW, two steps from zero moments, gradients scaled (clipping) and decoupled weight decay;
    // the update p − p0 is compared, not p, so a wrong step cannot hide under p0.
    private void AdamW32()
    {
        int n = 5001;
        using var tp = RandomInput(DType.F32, [n], out var p0, scale: 0.1);
        using var tg = RandomInput(DType.F32, [n], out var g1);
        var g2 = Rand(DType.F32, n);
        using var tm = Zeros(n);
        using var tv = Zeros(n);
        using var partial = Poisoned(DType.F32, 4096);
        double sumsq = AdamWOp.SumOfSquares(_k, new[] { tg }, partial, (int)partial.ElementCount);
        Compare("gradient sum of squares", new[] { (float)sumsq }, new[] { g1.Sum(x => (double)x * x) }, 1e-5);
        AdamWOp.Update(_k, tp, tg, tm, tv, Lr, Beta1, Beta2, Eps, Wd, 1, GradScale);
        tg.CopyFromFloats(g2);
        AdamWOp.Update(_k, tp, tg, tm, tv, Lr, Beta1, Beta2, Eps, Wd, 2, GradScale);
        var p = D(p0);
        var m = new double[n];
        var v = new double[n];
        for (int step = 1; step <= 2; step++)
            Kernels.AdamW.Reference.Step(p, D(step == 1 ? g1 : g2), m, v, Lr, Beta1, Beta2, Eps, Wd, step, GradScale);
        var dp = tp.ToFloatArray().Select((x, i) => x - p0[i]).ToArray();
        Compare("32-bit update p − p0 (2 steps)", dp, p.Select((x, i) => x - p0[i]).ToArray(), 1e-4);
        Compare("32-bit first moment", tm, m, 1e-5);
        Compare("32-bit second moment", tv, v, 1e-5);
    }

    // bitsandbytes' blockwise 8-bit AdamW: per block of 256, dequantize m (signed map) and v (unsigned map), update in f32,
    // requantize by nearest code against the new absmax.
    private void AdamW8()
    {
        int n = 1000, bs = AdamW8bit.BlockSize, blocks = (n + bs - 1) / bs;
        using var tp = RandomInput(DType.F32, [n], out var p0, scale: 0.1);
        using var tg = RandomInput(DType.F32, [n], out var g1);
        var g2 = Rand(DType.F32, n);
        var ms = Kernels.Nf4.SignedDynamicMap();
        var us = Kernels.Nf4.UnsignedDynamicMap();
        using var qm = _dev.Allocate(DType.U8, n);
        using var qv = _dev.Allocate(DType.U8, n);
        qm.FillBytes(0);
        qv.FillBytes(0);
        using var am = Zeros(blocks);
        using var av = Zeros(blocks);
        using var tms = Up(DType.F32, ms, 256);
        using var tus = Up(DType.F32, us, 256);
        void Step(int step) => AdamW8bit.Update(_k, tp.View<float>(), tg.View<float>(), qm.View<byte>(), qv.View<byte>(), am.View<float>(), av.View<float>(),
            tms.View<float>(), tus.View<float>(), Lr, Beta1, Beta2, Eps, Wd, step, GradScale);
        Step(1);
        tg.CopyFromFloats(g2);
        Step(2);
        var p = D(p0);
        var codesM = new (int Index, bool Tie)[n];
        var codesV = new (int Index, bool Tie)[n];
        var absm = new double[blocks];
        var absv = new double[blocks];
        for (int step = 1; step <= 2; step++)
            AdamW8bit.Reference.Step(p, D(step == 1 ? g1 : g2), codesM, codesV, absm, absv, ms, us, Lr, Beta1, Beta2, Eps, Wd, step, GradScale, tie: 1e-6);
        var dp = tp.ToFloatArray().Select((x, i) => x - p0[i]).ToArray();
        Compare("8-bit update p − p0 (2 steps)", dp, p.Select((x, i) => x - p0[i]).ToArray(), 1e-4);
        CompareCodes("8-bit first-moment codes", qm.ToArray<byte>(), codesM);
        CompareCodes("8-bit second-moment codes", qv.ToArray<byte>(), codesV);
        Compare("8-bit first-moment absmax", am, absm, 1e-5);
        Compare("8-bit second-moment absmax", av, absv, 1e-5);
    }
}
