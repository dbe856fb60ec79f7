using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.SafeTensors;
using NativeLora.Tensors;

namespace NativeLora.Export;

/// <summary>
/// merge_and_unload: writes an HF model directory whose weights are W0 + (alpha/r)·B·A (rsLoRA scale
/// alpha/√r; DoRA: m/‖W0 + sBA‖ per row times (W0 + sBA)) for every adapted projection, and the
/// adapter's trained copies for modules_to_save. Layer by layer: each tensor is read from the base's
/// memory map, merged on the device with the GEMM (and DoRA kernels), converted and written before
/// the next is read, so peak memory is about one tensor. Several adapters combine as HF PEFT's
/// add_weighted_adapter(combination_type="linear"): B = Σ √wᵢ·Bᵢ, A = Σ √wᵢ·sᵢ·Aᵢ (same rank
/// required; the product has cross terms, exactly as PEFT's).
/// A QLoRA base saved by transformers (bitsandbytes NF4 weights) is dequantized first and the output is
/// dense: merging into 4-bit weights is not done, because re-quantizing W0 + ΔW loses the update's small
/// values in NF4's 16 levels.
/// </summary>
public static class LoraMerge
{
    private sealed record AdapterFile(PeftAdapterFile File, double Weight)
    {
        public LoraConfig Config => File.Config;
        public bool Adapts(string target) => File.AdaptedTargets.Any(t => t.Name == target);
    }

    public static void Run(ComputeDevice device, string modelDir, IReadOnlyList<string> adapterDirs, IReadOnlyList<double>? weights,
        string outDir, DType outDType, long maxShardBytes = 5L << 30)
    {
        if (adapterDirs.Count == 0) throw new ArgumentException("give at least one --adapter");
        if (weights != null && weights.Count != adapterDirs.Count)
            throw new ArgumentException($"{weights.Count} weights for {adapterDirs.Count} adapters");
        if (Path.GetFullPath(outDir) == Path.GetFullPath(modelDir)) throw new ArgumentException("the output directory must differ from the base model's");
        var config = ModelDirectory.ReadConfig(modelDir);
        using var baseFiles = ShardedSafeTensors.Open(modelDir);
        ModelDirectory.CheckCheckpoint(baseFiles, config, modelDir);
        var adapters = new List<AdapterFile>();
        try
        {
            for (int i = 0; i < adapterDirs.Count; i++)
            {
                double weight = weights?[i] ?? 1.0;
                if (!(weight > 0)) throw new ArgumentException($"adapter weight {weight} for {adapterDirs[i]} must be > 0");
                adapters.Add(new AdapterFile(PeftAdapterFile.Open(adapterDirs[i], config), weight));
            }
            if (adapters.Count > 1)
            {
                if (adapters.Select(a => a.Config.R).Distinct().Count() > 1)
                    throw new ArgumentException("a linear combination of adapters needs one rank (as PEFT's add_weighted_adapter 'linear')");
                if (adapters.Any(a => a.Config.UseDora || a.Config.ModulesToSave.Length > 0))
                    throw new ArgumentException("combining several adapters works for plain LoRA adapters only (no DoRA, no modules_to_save)");
            }
            var k = device.Kernels;
            var writer = new ShardedSafeTensorsWriter(maxShardBytes);
            writer.SetMetadata("format", "pt");
            foreach (var (name, shape) in CausalLm.ExpectedParameters(config))
            {
                string target = name.EndsWith(".weight") ? name[..^".weight".Length] : name;
                writer.Add(name, ModelDirectory.ToSafeTensorsDType(outDType), shape.Select(d => (long)d).ToArray(),
                    () => ModelDirectory.Encode(Merged(device, k, baseFiles, adapters, name, target, shape), outDType));
            }
            writer.Write(outDir);
            ModelDirectory.WriteConfig(outDir, config, outDType);
            Text.HfTokenizer.CopyFiles(modelDir, outDir, "generation_config.json");
        }
        finally
        {
            foreach (var a in adapters) a.File.Dispose();
        }
    }

    private static float[] Merged(ComputeDevice device, KernelSet k, ShardedSafeTensors baseFiles, List<AdapterFile> adapters, string name, string target, int[] shape)
    {
        // modules_to_save: the adapter's trained copy replaces the base tensor
        foreach (var ad in adapters)
            if (ad.File.ReadSavedParameter(name) is { } trained) return trained;
        var w0 = ModelDirectory.ReadAsFloat32(device, baseFiles, name, shape);
        var withA = adapters.Where(a => a.Adapts(target)).ToList();
        if (withA.Count == 0) return w0;
        int outF = shape[0], inF = shape[1], r = withA[0].Config.R;
        using var w = device.Allocate(DType.F32, outF, inF);
        w.CopyFrom<float>(w0);
        using var a = device.Allocate(DType.F32, r, inF);
        using var b = device.Allocate(DType.F32, outF, r);
        if (withA.Count == 1 && withA[0].Weight == 1.0)
        {
            var ad = withA[0];
            a.CopyFromFloats(ad.File.ReadA(target));
            b.CopyFromFloats(ad.File.ReadB(target));
            LoraOp.Merge(w, a, b, ad.Config.Scale);
            if (ad.Config.UseDora)
            {
                using var m = device.Allocate(DType.F32, outF);
                m.CopyFrom<float>(ad.File.ReadMagnitude(target));
                DoraOp.Merge(k, w, m);
            }
            return w.ToArray<float>();
        }
        // PEFT 'linear': B = Σ √wᵢ Bᵢ, A = Σ √wᵢ sᵢ Aᵢ, merged with scale 1
        var aSum = new float[r * inF];
        var bSum = new float[outF * r];
        foreach (var ad in withA)
        {
            float sa = (float)(Math.Sqrt(ad.Weight) * ad.Config.Scale), sb = (float)Math.Sqrt(ad.Weight);
            var ai = ad.File.ReadA(target);
            var bi = ad.File.ReadB(target);
            for (int i = 0; i < aSum.Length; i++) aSum[i] += sa * ai[i];
            for (int i = 0; i < bSum.Length; i++) bSum[i] += sb * bi[i];
        }
        a.CopyFrom<float>(aSum);
        b.CopyFrom<float>(bSum);
        LoraOp.Merge(w, a, b, 1f);
        return w.ToArray<float>();
    }
}
