using NativeLora.Export;
using NativeLora.Gguf;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.SafeTensors;
using NativeLora.Tensors;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Lora;

/// <summary>
/// One matrix of adapter files (key spellings × stored dtypes × LoRA/rsLoRA/DoRA/modules_to_save) read by
/// every consumer: generation (LoraAdapter.Load), merge and GGUF export (merged model and GGUF LoRA).
/// The reference is computed here in float64 from the stored values, read with the test's own key rules.
/// </summary>
public class PeftAdapterFileTests : TempDirTests
{
    /// <summary>A canonical PEFT key as each spelling writes it.</summary>
    private static string Spell(string key, string spelling)
    {
        if (spelling == "peft") return key;
        string k = key.Replace(".lora_A.weight", ".lora_A.default.weight").Replace(".lora_B.weight", ".lora_B.default.weight");
        if (k.EndsWith(".lora_magnitude_vector")) k += spelling == "default" ? ".default" : ".default.weight";
        if (spelling == "state_dict" && k.EndsWith("lm_head.weight")) k = k.Replace("lm_head.weight", "lm_head.modules_to_save.default.weight");
        return k;
    }

    /// <summary>Rewrites an f32 adapter with other key spellings and another stored dtype.</summary>
    private static void Rewrite(string from, string to, string spelling, DType dtype)
    {
        Directory.CreateDirectory(to);
        File.Copy(Path.Combine(from, PeftAdapterFile.ConfigFileName), Path.Combine(to, PeftAdapterFile.ConfigFileName));
        using var f = SafeTensorsFile.Open(Path.Combine(from, PeftAdapterFile.WeightsFileName));
        var w = new SafeTensorsWriter();
        w.SetMetadata("format", "pt");
        foreach (var t in f.Tensors)
            w.Add(Spell(t.Name, spelling), ModelDirectory.ToSafeTensorsDType(dtype), t.Shape, ModelDirectory.Encode(f.ReadAsFloat32(t.Name), dtype));
        w.Write(Path.Combine(to, PeftAdapterFile.WeightsFileName));
    }

    [Test]
    public void GenerateMergeAndGgufExportReadEverySpellingAlike(
        [Values("peft", "default", "state_dict")] string spelling,
        [Values(DType.F32, DType.BF16, DType.F16)] DType dtype,
        [Values("lora", "rslora", "dora", "lm_head")] string variant)
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var c = GenerationTests.TinyConfig("llama") with { VocabSize = 300 }; // GGUF's placeholder vocabulary needs ≥ 259
        var baseDir = Path.Combine(Dir, "base");
        var w0 = RandomInit.Create(c, seed, 0.08);
        ModelDirectory.Save(baseDir, c, w0, DType.F32);
        var cfg = new LoraConfig
        {
            R = 4, Alpha = 8, Dropout = 0, UseRslora = variant == "rslora", UseDora = variant == "dora",
            TargetModules = new[] { "q_proj", "k_proj", "down_proj" },
            ModulesToSave = variant == "lm_head" ? new[] { "lm_head" } : Array.Empty<string>(),
        };
        var f32Dir = Path.Combine(Dir, "f32");
        using (var model = ModelDirectory.Load(TestDevice.Shared, baseDir, DType.F32))
        using (var adapter = LoraAdapter.Attach(model, cfg, seed))
        {
            foreach (var m in adapter.Modules)
            {
                m.B.CopyFrom<float>(Check.RandomFloats(rng, m.B.ElementCount, 0.2));
                if (m.Magnitude != null) m.Magnitude.CopyFrom<float>(m.Magnitude.ToArray<float>().Select(v => v * (float)(1 + 0.2 * rng.NextDouble())).ToArray());
            }
            foreach (var s in adapter.SavedModules) s.Master.CopyFrom<float>(Check.RandomFloats(rng, s.Master.ElementCount, 0.1));
            adapter.Save(f32Dir);
        }
        var adapterDir = Path.Combine(Dir, "adapter");
        Rewrite(f32Dir, adapterDir, spelling, dtype);

        // float64 reference of every adapted weight, from the stored values
        var reference = new Dictionary<string, double[]>();
        using (var raw = SafeTensorsFile.Open(Path.Combine(adapterDir, PeftAdapterFile.WeightsFileName)))
        {
            double scale = cfg.UseRslora ? cfg.Alpha / Math.Sqrt(cfg.R) : cfg.Alpha / cfg.R;
            foreach (var (name, shape) in CausalLm.ExpectedParameters(c))
            {
                string target = name[..^".weight".Length];
                if (!cfg.TargetModules.Any(t => target.EndsWith("." + t))) continue;
                int outF = shape[0], inF = shape[1], r = cfg.R;
                var a = raw.ReadAsFloat32(Spell($"base_model.model.{target}.lora_A.weight", spelling));
                var b = raw.ReadAsFloat32(Spell($"base_model.model.{target}.lora_B.weight", spelling));
                var wt = new double[outF * inF];
                for (int o = 0; o < outF; o++)
                    for (int i = 0; i < inF; i++)
                    {
                        double d = 0;
                        for (int j = 0; j < r; j++) d += (double)b[o * r + j] * a[j * inF + i];
                        wt[o * inF + i] = w0[name][o * inF + i] + scale * d;
                    }
                if (cfg.UseDora) // W' = m / ‖W0 + sBA‖_row · (W0 + sBA)
                {
                    var mag = raw.ReadAsFloat32(Spell($"base_model.model.{target}.lora_magnitude_vector", spelling));
                    for (int o = 0; o < outF; o++)
                    {
                        double norm = Math.Sqrt(Enumerable.Range(0, inF).Sum(i => wt[o * inF + i] * wt[o * inF + i]));
                        for (int i = 0; i < inF; i++) wt[o * inF + i] *= mag[o] / norm;
                    }
                }
                reference[name] = wt;
            }
            if (variant == "lm_head") reference["lm_head.weight"] = Ref.ToDouble(raw.ReadAsFloat32(Spell("base_model.model.lm_head.weight", spelling)));
        }

        // merge
        var mergedDir = Path.Combine(Dir, "merged");
        LoraMerge.Run(TestDevice.Shared, baseDir, new[] { adapterDir }, null, mergedDir, DType.F32);
        using (var merged = ShardedSafeTensors.Open(mergedDir))
            foreach (var (name, expected) in reference)
                Check.Close(merged.ReadAsFloat32(name), expected, 1e-6, $"merged {name} ({spelling}, {dtype}, {variant})", seed);

        // generate: the adapter applied at run time gives the merged model's logits
        var tokens = TokenBatch.FromSequences(new[] { Enumerable.Range(0, 9).Select(_ => rng.Next(c.VocabSize)).ToArray() });
        float[] withAdapter;
        using (var model = ModelDirectory.Load(TestDevice.Shared, baseDir, DType.F32))
        using (LoraAdapter.Load(model, adapterDir))
            withAdapter = model.Logits(tokens);
        using (var merged = ModelDirectory.Load(TestDevice.Shared, mergedDir, DType.F32))
            Check.Close(withAdapter, Ref.ToDouble(merged.Logits(tokens)), 1e-5, $"generate vs merged ({spelling}, {dtype}, {variant})", seed);

        // GGUF export of base + adapter: every adapted tensor, in GGUF's q/k row order
        var gguf = Path.Combine(Dir, "merged.gguf");
        GgufExport.Run(TestDevice.Shared, baseDir, adapterDir, gguf, GgufFileType.AllF32);
        using (var g = GgufFile.Open(gguf))
            foreach (var (name, expected) in reference)
            {
                var shape = CausalLm.ExpectedParameters(c).Single(p => p.Name == name).Shape;
                var want = name.EndsWith("q_proj.weight") ? GgufNames.PermuteQk<double>(expected, shape[0], shape[1], c.NumHeads)
                    : name.EndsWith("k_proj.weight") ? GgufNames.PermuteQk<double>(expected, shape[0], shape[1], c.NumKvHeads) : expected;
                Check.Close(g.ReadAsFloat32(GgufNames.FromHf(name)), want, 1e-6, $"GGUF {name} ({spelling}, {dtype}, {variant})", seed);
            }

        // GGUF LoRA adapter (llama.cpp has no DoRA or modules_to_save form: refused by name)
        var loraGguf = Path.Combine(Dir, "lora.gguf");
        if (variant is "dora" or "lm_head")
        {
            var e = Assert.Throws<NotSupportedException>(() => GgufExport.WriteAdapter(baseDir, adapterDir, loraGguf))!;
            Assert.That(e.Message, Does.Contain(adapterDir));
            return;
        }
        GgufExport.WriteAdapter(baseDir, adapterDir, loraGguf);
        using var lg = GgufFile.Open(loraGguf);
        using var raw2 = SafeTensorsFile.Open(Path.Combine(adapterDir, PeftAdapterFile.WeightsFileName));
        int adapted = 0;
        foreach (var (name, shape) in CausalLm.ExpectedParameters(c).Where(p => reference.ContainsKey(p.Name)))
        {
            string target = name[..^".weight".Length];
            var b = raw2.ReadAsFloat32(Spell($"base_model.model.{target}.lora_B.weight", spelling));
            if (name.EndsWith("q_proj.weight")) b = GgufNames.PermuteQk<float>(b, shape[0], cfg.R, c.NumHeads);
            if (name.EndsWith("k_proj.weight")) b = GgufNames.PermuteQk<float>(b, shape[0], cfg.R, c.NumKvHeads);
            Assert.That(lg.ReadAsFloat32(GgufNames.FromHf(name) + ".lora_a"), Is.EqualTo(raw2.ReadAsFloat32(Spell($"base_model.model.{target}.lora_A.weight", spelling))), name);
            Assert.That(lg.ReadAsFloat32(GgufNames.FromHf(name) + ".lora_b"), Is.EqualTo(b), name);
            adapted++;
        }
        Assert.That(adapted, Is.EqualTo(lg.Tensors.Count / 2).And.EqualTo(3 * c.NumLayers));
    }

    [Test]
    public void TwoSpellingsOfOneTensorAreRefusedByName()
    {
        var c = GenerationTests.TinyConfig("llama");
        var dir = Path.Combine(Dir, "adapter");
        using (var model = GenerationTests.TinyModel(c, 1))
        using (var a = LoraAdapter.Attach(model, new LoraConfig { R = 2, TargetModules = new[] { "v_proj" } }, 1))
            a.Save(dir);
        var path = Path.Combine(dir, PeftAdapterFile.WeightsFileName);
        var w = new SafeTensorsWriter();
        using (var f = SafeTensorsFile.Open(path))
        {
            foreach (var t in f.Tensors) w.Add(t.Name, t.DType, t.Shape, f.GetBytes(t.Name).ToArray());
            var key = PeftAdapterFile.KeyA("model.layers.1.self_attn.v_proj");
            w.Add(Spell(key, "default"), SafeTensorsDType.F32, f.Get(key).Shape, f.GetBytes(key).ToArray());
        }
        w.Write(path);
        using var model2 = GenerationTests.TinyModel(c, 1);
        var e = Assert.Throws<InvalidDataException>(() => LoraAdapter.Load(model2, dir))!;
        Assert.That(e.Message, Does.Contain(path).And.Contain("two spellings")
            .And.Contain("'base_model.model.model.layers.1.self_attn.v_proj.lora_A.default.weight'"));
    }
}
