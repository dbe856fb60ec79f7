using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using NativeLora.Devices;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Training;

namespace NativeLora.Bench;

/// <summary>
/// `nativelora-bench train`: end-to-end LoRA training throughput on random weights and tokens —
/// warm-up, then timed optimizer steps in repetitions — with the phase split, memory, model FLOPs
/// utilisation against the GEMM peak measured in the same run, and (with --peer torch) the same
/// step in PyTorch on the same machine, reported as a ratio of medians.
/// </summary>
public static class TrainBench
{
    public static int Run(string[] args)
    {
        string Arg(string name, string def) => BenchArgs.Get(args, name, def);
        var root = BenchArgs.Root();
        string modelArg = Arg("model", "tiny-bench");
        string configPath = File.Exists(Path.Combine(root, "bench", "configs", modelArg + ".json")) ? Path.Combine(root, "bench", "configs", modelArg + ".json") : Path.Combine(modelArg, "config.json");
        var config = ModelConfig.Load(configPath);
        int seq = int.Parse(Arg("seq", "128")), micro = int.Parse(Arg("micro-batch", "4")), steps = int.Parse(Arg("steps", "10"));
        int warmup = int.Parse(Arg("warmup", "3")), reps = int.Parse(Arg("reps", "3")), r = int.Parse(Arg("r", "16"));
        string targets = Arg("targets", "q_proj,v_proj"), peer = Arg("peer", "none"), method = Arg("method", "lora");
        int peerThreads = int.Parse(Arg("peer-threads", Environment.ProcessorCount.ToString())); // torch here defaults to 1 thread
        if (method != "lora") throw new ArgumentException($"--method {method}: only lora is implemented");
        if (peer is not ("none" or "torch" or "peft")) throw new ArgumentException($"--peer {peer}: expected none, torch (CPU, Debian's PyTorch) or peft (HF transformers + PEFT, e.g. on a GPU)");

        using var device = ComputeDevice.Open(ComputeDevice.ParseKind(Arg("device", "auto")));
        var dtype = device.ResolveDType(Arg("dtype", "auto"));
        var sw0 = Stopwatch.StartNew();
        var expected = CausalLm.ExpectedParameters(config);
        var parameters = expected.Select((p, i) => (p.Name, Tensor: RandomTensor(device, dtype, p.Name, p.Shape, i))).ToDictionary(p => p.Name, p => p.Tensor);
        long paramCount = expected.Sum(p => Tensor.CountElements(p.Shape));
        Console.Error.WriteLine($"random weights: {paramCount / 1e6:F1}M parameters in {dtype.Name()} on the device in {sw0.Elapsed.TotalSeconds:F1} s");
        using var model = new CausalLm(device, config, parameters) { GradientCheckpointing = false };
        var lora = new LoraConfig { R = r, Alpha = 2 * r, Dropout = 0, TargetModules = targets.Split(',') };
        using var adapter = LoraAdapter.Attach(model, lora, 0);
        adapter.SetTraining(true);
        using var optimizer = new AdamWOptimizer(device, adapter.Arenas);
        var rng = new Random(0);
        TokenBatch MakeBatch() => TokenBatch.FromSequences(Enumerable.Range(0, micro).Select(_ => Enumerable.Range(0, seq).Select(_ => rng.Next(config.VocabSize)).ToArray()).ToArray());

        void Step(out double dataMs, out double fbMs, out double optMs)
        {
            var sw = Stopwatch.StartNew();
            var batch = MakeBatch();
            dataMs = sw.Elapsed.TotalMilliseconds;
            sw.Restart();
            optimizer.ZeroGradients();
            model.ForwardBackward(batch);
            device.Synchronize();
            fbMs = sw.Elapsed.TotalMilliseconds;
            sw.Restart();
            double norm = optimizer.GradientNorm();
            optimizer.Step(2e-4f, (float)Math.Min(1.0, 1.0 / (norm + 1e-6)));
            adapter.SyncCompute(model.Kernels);
            device.Synchronize();
            optMs = sw.Elapsed.TotalMilliseconds;
        }

        for (int i = 0; i < warmup; i++) Step(out _, out _, out _);
        var tps = new List<double>();
        double data = 0, fb = 0, opt = 0;
        device.ResetPeak();
        long launches0 = model.Kernels.Launches, gemms0 = NativeLora.Native.NativeCore.GemmCalls, memsets0 = device.Memsets;
        for (int rep = 0; rep < reps; rep++)
        {
            var sw = Stopwatch.StartNew();
            for (int s = 0; s < steps; s++)
            {
                Step(out var d, out var f, out var o);
                data += d; fb += f; opt += o;
            }
            tps.Add(micro * seq * steps / sw.Elapsed.TotalSeconds);
        }
        var memory = device.MemoryStats; // before the forward-only timing and the GEMM peak allocate more
        var planned = MemoryEstimate.For(config, lora, dtype, micro, seq, checkpointing: false, method: method);
        int n = reps * steps;
        double kernelsPerStep = (double)(model.Kernels.Launches - launches0) / n, gemmsPerStep = (double)(NativeLora.Native.NativeCore.GemmCalls - gemms0) / n,
            memsetsPerStep = (double)(device.Memsets - memsets0) / n;
        var fwdBatch = MakeBatch();
        var swf = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++) model.Loss(fwdBatch);
        device.Synchronize();
        double fwdMs = swf.Elapsed.TotalMilliseconds / steps;
        double fbAvg = fb / n;

        // model FLOPs per step: frozen matmuls forward + their dX backward (4·P), adapter weights 6·P_lora, attention 3 × 4·B·H·T²·hd
        long linearParams = CausalLm.ExpectedParameters(config).Where(p => p.Shape.Length == 2 && p.Name != "model.embed_tokens.weight").Sum(p => (long)p.Shape[0] * p.Shape[1]);
        double tokens = (double)micro * seq;
        double flops = (4.0 * linearParams + 6.0 * adapter.TrainableParameters) * tokens + 3 * 4.0 * micro * config.NumHeads * (double)seq * seq * config.HeadDim * config.NumLayers;
        double peak = MeasureGemmPeak(device, dtype);
        double median = Median(tps);
        double stepMs = micro * seq / median * 1000;
        Console.WriteLine($"device: {device.Description}; model {modelArg} ({Path.GetFileName(configPath)}, {paramCount / 1e6:F1}M parameters), {dtype.Name()}, LoRA r {r} on {targets}, seq {seq} × micro-batch {micro}");
        Console.WriteLine($"nativelora: {median:F0} tokens/s median of {reps} × {steps} steps (spread {tps.Min():F0}–{tps.Max():F0}); {stepMs:F1} ms/step");
        Console.WriteLine($"  phases per step: data {data / n:F2} ms, forward {fwdMs:F1} ms (separate forward pass), backward {Math.Max(0, fbAvg - fwdMs):F1} ms (forward+backward {fbAvg:F1} minus forward), optimizer {opt / n:F2} ms");
        Console.WriteLine($"  memory: planner {MemoryEstimate.Gb(planned.Total)} vs allocator peak {MemoryEstimate.Gb(memory.PeakAllocated)} in live tensors " +
                          $"(ratio {(double)planned.Total / memory.PeakAllocated:F3}), {MemoryEstimate.Gb(memory.PeakReserved)} reserved on the device; planner terms: {planned}");
        Console.WriteLine($"  model FLOPs {flops / 1e9:F2} GFLOP/step; MFU {flops / (stepMs / 1000) / (peak * 1e9) * 100:F1}% of the measured {dtype.Name()} GEMM peak {peak:F0} GFLOP/s");
        double ops = kernelsPerStep + gemmsPerStep + memsetsPerStep;
        Console.WriteLine($"  device operations per step: {ops:F0} ({kernelsPerStep:F0} ILGPU kernels + {gemmsPerStep:F0} GEMMs + {memsetsPerStep:F0} memsets), {ops / config.NumLayers:F0} per layer (all ÷ {config.NumLayers} layers)");
        if (Diagnostics.OpProfiler.Enabled) Console.WriteLine("op profile (NATIVELORA_PROFILE=1; synchronising slows the step; nested ops count in both):\n" + Diagnostics.OpProfiler.Report());
        if (peer != "none")
        {
            var result = peer == "torch"
                ? RunPeer("/usr/bin/python3", "torch_lora_step.py", "install Debian's python3-torch: apt-get install python3-torch", "--threads", peerThreads.ToString())
                : RunPeer(Environment.GetEnvironmentVariable("NATIVELORA_PYTHON") ?? "python3", "peft_lora_step.py",
                    "it needs torch, transformers and peft importable by python3 (or by $NATIVELORA_PYTHON)", "--dtype", dtype.Name(), "--device", device.IsCuda ? "cuda" : "cpu");
            var peerTps = result["tokens_per_s"]!.AsArray().Select(x => (double)x!).ToList();
            double pm = Median(peerTps);
            string versions = peer == "torch" ? $"pytorch {result["torch"]} ({result["threads"]} threads)" : $"peft {result["peft"]} (transformers {result["transformers"]}, torch {result["torch"]}, {result["device"]}, {result["dtype"]})";
            Console.WriteLine($"{versions}: {pm:F0} tokens/s median of {reps} × {steps} steps (spread {peerTps.Min():F0}–{peerTps.Max():F0})");
            Console.WriteLine($"ratio nativelora / {peer}: {median / pm:F2} (range {tps.Min() / peerTps.Max():F2}–{tps.Max() / peerTps.Min():F2})");
        }
        return 0;

        // the peer runs the same shape, LoRA targets, optimizer, sequence length and micro-batch and prints one JSON line
        JsonObject RunPeer(string python, string script, string hint, params string[] extra) =>
            JsonNode.Parse(PeerScript.Run(python, script, new[] { configPath, "--seq", seq.ToString(), "--micro-batch", micro.ToString(),
                "--steps", steps.ToString(), "--warmup", warmup.ToString(), "--reps", reps.ToString(), "--r", r.ToString(), "--alpha", (2 * r).ToString(),
                "--targets", targets }.Concat(extra), hint).Last())!.AsObject();
    }

    /// <summary>
    /// One weight tensor made on the device: uniform(±0.02·√3) has transformers' std 0.02 for a Llama; norms are
    /// ones. A host-side draw and upload took 6.8 s for the 1B model on the H200 (45 s expected for the 8B); the
    /// device kernel takes milliseconds. A throughput benchmark only needs the right scale.
    /// </summary>
    private static Tensor RandomTensor(ComputeDevice device, DType dtype, string name, int[] shape, int index)
    {
        var t = device.Allocate(dtype, shape);
        if (name.EndsWith("norm.weight", StringComparison.Ordinal)) ElementwiseOp.Fill(device.Kernels, t, 1f);
        else if (name.EndsWith(".bias", StringComparison.Ordinal)) ElementwiseOp.Zero(device.Kernels, t);
        else ElementwiseOp.FillUniform(device.Kernels, t, (ulong)(index + 1) * 1_000_003UL, 0.02f * MathF.Sqrt(3));
        return t;
    }

    /// <summary>
    /// GEMM rate in the training dtype (bf16 on a GPU runs on tensor cores, f32 would understate the peak), on
    /// random operands: a product of zeros runs faster than real data (METHOD.md).
    /// </summary>
    internal static double MeasureGemmPeak(ComputeDevice device, DType dtype)
    {
        int size = device.IsCuda ? 4096 : 1024;
        using var a = device.Allocate(dtype, size, size);
        using var b = device.Allocate(dtype, size, size);
        using var c = device.Allocate(dtype, size, size);
        ElementwiseOp.FillUniform(device.Kernels, a, 1, 1f);
        ElementwiseOp.FillUniform(device.Kernels, b, 2, 1f);
        Gemm.Run(a, b, c);
        device.Synchronize();
        int reps = device.IsCuda ? 20 : 5;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < reps; i++) Gemm.Run(a, b, c);
        device.Synchronize();
        return 2.0 * size * size * (double)size * reps / sw.Elapsed.TotalSeconds / 1e9;
    }

    private static double Median(List<double> x)
    {
        var s = x.OrderBy(v => v).ToList();
        return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
    }
}
