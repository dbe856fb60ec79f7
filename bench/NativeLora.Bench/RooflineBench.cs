using System.Diagnostics;
using System.Text.Json.Nodes;
using NativeLora.Devices;
using NativeLora.Ops;
using NativeLora.Quantization;
using NativeLora.Tensors;

namespace NativeLora.Bench;

/// <summary>
/// `nativelora-bench roofline [--device cuda] [--peer torch|none] [--dtype bf16]`: the step's heavy pieces against
/// the ceilings measured in the same run, one table. Ceilings: device-to-device copy of a large buffer (bytes read
/// plus written) and a 4096³ GEMM on random operands. Pieces: the NF4 dequantize of an 8B MLP weight (bytes: codes,
/// absmax codes and the dense output, each once) as a share of the copy rate; the fused cross-entropy at the Llama 3
/// 1B/8B vocabulary (its two GEMMs' FLOPs) as a share of the GEMM peak; attention forward+backward at the shapes of
/// issue #14, against PyTorch SDPA (flash) and the materialised path on the same card (bench/peer/attention_peer.py).
/// Attention FLOPs count the causal half, as the peer does: 3.5 × 2·B·H·T²·hd for forward+backward.
/// Each figure is the median of timed repetitions after a warm-up, with the device synchronised around the loop.
/// </summary>
public static class RooflineBench
{
    private static readonly (int B, int H, int Kv, int T, int D)[] AttentionShapes =
    {
        (4, 32, 8, 512, 64), (4, 32, 8, 512, 128), (1, 32, 8, 2048, 128), (1, 32, 8, 8192, 128),
    };

    public static int Run(string[] args)
    {
        string Arg(string name, string def) => BenchArgs.Get(args, name, def);
        using var device = ComputeDevice.Open(ComputeDevice.ParseKind(Arg("device", "auto")));
        var dtype = device.ResolveDType(Arg("dtype", "auto"));
        string peer = Arg("peer", "none");
        bool big = device.IsCuda;
        var k = device.Kernels;
        Console.WriteLine($"device: {device.Description}; {dtype.Name()}");

        // ceilings
        long copyElems = big ? 1L << 29 : 1L << 24; // 1 GiB of bf16 on a GPU: past every cache
        double copyGBs;
        using (var src = device.Allocate(dtype, checked((int)copyElems)))
        using (var dst = device.Allocate(dtype, checked((int)copyElems)))
        {
            ElementwiseOp.FillUniform(k, src, 3, 1f);
            double ms = TimeMs(device, () => src.CopyTo(dst), big ? 20 : 5);
            copyGBs = 2.0 * src.ByteLength / (ms / 1000) / 1e9;
        }
        double gemm = TrainBench.MeasureGemmPeak(device, dtype);
        Console.WriteLine($"ceilings: device copy {copyGBs:F0} GB/s (read + write of {copyElems * dtype.SizeOf() >> 20} MiB); {dtype.Name()} GEMM {Flops(gemm * 1e9)}");
        Console.WriteLine("| piece | shape | ms | rate | share of ceiling |");
        Console.WriteLine("|---|---|---|---|---|");

        // NF4 dequantize (QLoRA's base weight into scratch before the cuBLAS GEMM)
        {
            int rows = big ? 14336 : 1024, cols = big ? 4096 : 512;
            using var w = device.Allocate(dtype, rows, cols);
            ElementwiseOp.FillUniform(k, w, 4, 0.05f);
            using var q = Nf4Tensor.Quantize(k, w);
            using var outW = device.Allocate(dtype, rows, cols);
            double ms = TimeMs(device, () => q.Dequantize(k, outW), big ? 20 : 3);
            double bytes = q.StorageBytes + outW.ByteLength;
            double gbs = bytes / (ms / 1000) / 1e9;
            Console.WriteLine($"| nf4 dequantize (double quant) | {rows}×{cols} → {dtype.Name()} | {ms:F3} | {gbs:F0} GB/s | {100 * gbs / copyGBs:F0}% of copy |");
        }

        // fused cross-entropy at the Llama 3 vocabulary, 2048 tokens (seq 512 × 4)
        {
            int n = big ? 2048 : 256, dim = big ? 2048 : 256, vocab = big ? 128256 : 8192;
            using var h = device.Allocate(dtype, n, dim);
            using var wout = device.Allocate(dtype, vocab, dim);
            using var dh = device.Allocate(dtype, n, dim);
            ElementwiseOp.FillUniform(k, h, 5, 1f);
            ElementwiseOp.FillUniform(k, wout, 6, 0.05f);
            var rng = new Random(7);
            var labels = Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();
            foreach (int chunk in big ? new[] { 1024, 2048 } : new[] { 256 })
            {
                double ms = TimeMs(device, () => CrossEntropyOp.ForwardBackward(k, h, wout, labels, dh, null, chunk), big ? 10 : 2);
                double rate = 2 * 2.0 * n * dim * (double)vocab / (ms / 1000);
                Console.WriteLine($"| cross-entropy (logits + dh GEMMs, chunks of {chunk} rows) | {n}×{dim}, vocab {vocab} | {ms:F3} | {Flops(rate)} | {100 * rate / 1e9 / gemm:F0}% of GEMM |");
            }
        }

        // attention forward + backward, causal, GQA
        var ours = new List<(string Shape, double Ms)>();
        foreach (var (B, H, Kv, T0, D) in AttentionShapes)
        {
            int T = big ? T0 : Math.Min(T0, 128);
            var s = new AttentionShape(B, T, H, Kv, D);
            using var q = device.Allocate(dtype, B * T, H * D);
            using var kk = device.Allocate(dtype, B * T, Kv * D);
            using var v = device.Allocate(dtype, B * T, Kv * D);
            using var o = device.Allocate(dtype, B * T, H * D);
            using var dO = device.Allocate(dtype, B * T, H * D);
            using var dq = device.Allocate(dtype, B * T, H * D);
            using var dk = device.Allocate(dtype, B * T, Kv * D);
            using var dv = device.Allocate(dtype, B * T, Kv * D);
            using var lse = device.Allocate(DType.F32, B * H * T);
            using var seg = device.Allocate(DType.I32, B * T);
            seg.CopyFrom<int>(new int[B * T]);
            ElementwiseOp.FillUniform(k, q, 8, 1f);
            ElementwiseOp.FillUniform(k, kk, 9, 1f);
            ElementwiseOp.FillUniform(k, v, 10, 1f);
            ElementwiseOp.FillUniform(k, dO, 11, 1f);
            double ms = TimeMs(device, () =>
            {
                AttentionOp.Forward(k, q, kk, v, seg, o, lse, s);
                AttentionOp.Backward(k, q, kk, v, seg, o, lse, dO, dq, dk, dv, s);
            }, big ? 10 : 2);
            double rate = 3.5 * 2.0 * B * H * (double)T * T * D / (ms / 1000);
            string shape = $"B{B} H{H} KV{Kv} T{T} D{D}";
            ours.Add((shape, ms));
            Console.WriteLine($"| attention fwd+bwd (GEMM path, block {AttentionOp.BlockRows(s, dtype)} rows) | {shape} | {ms:F3} | {Flops(rate)} | {100 * rate / 1e9 / gemm:F1}% of GEMM |");
        }

        if (peer == "torch")
        {
            var args2 = new List<string> { "--device", device.IsCuda ? "cuda" : "cpu", "--dtype", dtype.Name() };
            foreach (var (shape, _) in ours) args2.AddRange(new[] { "--shape", shape });
            string[] lines;
            try { lines = PeerScript.Run(Environment.GetEnvironmentVariable("NATIVELORA_PYTHON") ?? "python3", "attention_peer.py", args2, "it needs torch"); }
            catch (InvalidOperationException e)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 1;
            }
            Console.WriteLine();
            Console.WriteLine("| attention fwd+bwd | nativelora ms | torch sdpa ms | torch materialised ms | ours ÷ sdpa | ours ÷ materialised |");
            Console.WriteLine("|---|---|---|---|---|---|");
            foreach (var line in lines)
            {
                var j = JsonNode.Parse(line)!.AsObject();
                string shape = (string)j["shape"]!;
                double mine = ours.First(x => x.Shape == shape).Ms, flash = (double)j["flash_ms"]!, math = (double)j["math_ms"]!;
                Console.WriteLine($"| {shape} | {mine:F3} | {flash:F3} | {math:F3} | {mine / flash:F2} | {mine / math:F2} |");
            }
        }
        return 0;
    }

    private static string Flops(double perSecond) => perSecond >= 1e12 ? $"{perSecond / 1e12:F1} TFLOP/s" : $"{perSecond / 1e9:F1} GFLOP/s";

    /// <summary>Median of repetitions of one call, each timed with the device synchronised, after two warm-up calls.</summary>
    private static double TimeMs(ComputeDevice device, Action run, int reps)
    {
        run();
        run();
        device.Synchronize();
        var times = new List<double>();
        for (int i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            run();
            device.Synchronize();
            times.Add(sw.Elapsed.TotalMilliseconds);
        }
        times.Sort();
        return times[times.Count / 2];
    }
}
