using NativeLora.Gguf;

namespace NativeLora.Tests.Gguf;

/// <summary>
/// Expected types from reading llama.cpp src/llama-quant.cpp (llama_tensor_get_type_impl,
/// tensor_type_fallback, tensor_allows_quantization; use_more_bits(i, n) = i &lt; n/8 || i ≥ 7n/8 ||
/// (i − n/8) % 3 == 2). llama.cpp visits tensors sorted by layer (llama-model-loader.h
/// weight_name_comparer), so its attn_v / ffn_down counters equal the layer index. During development the
/// whole table for eight model shapes × eight file types (20,336 decisions) was also compared with
/// libllama's llama_quant_compute_types (scripts/ggml-reference/mix.cpp): all agreed.
/// </summary>
public class GgufQuantMixTests
{
    // Llama 3 8B: 32 layers, hidden 4096, GQA 32/8 (k/v rows 1024), FFN 14336, vocab 128256, untied.
    static readonly GgufQuantMix.Model Llama8B = GgufQuantMix.Model.ForLlama(32, 32, 8, tiedEmbeddings: false);

    static long[] ShapeOf8B(string name) => name switch
    {
        "token_embd.weight" or "output.weight" => [128256, 4096],
        _ when name.EndsWith("_norm.weight") => [4096],
        _ when name.Contains("attn_k") || name.Contains("attn_v") => [1024, 4096],
        _ when name.Contains("attn_q") || name.Contains("attn_output") => [4096, 4096],
        _ when name.Contains("ffn_down") => [4096, 14336],
        _ => [14336, 4096],
    };

    static GgmlType TypeOf8B(string name, GgufFileType ft) => GgufQuantMix.TypeFor(name, ShapeOf8B(name), GgufNames.LayerOf(name), ft, Llama8B);

    static readonly int[] MoreBitsLayers32 = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];

    [Test]
    public void UseMoreBitsFor32Layers()
    {
        var got = Enumerable.Range(0, 32).Where(i => GgufQuantMix.UseMoreBits(i, 32)).ToArray();
        Assert.That(got, Is.EqualTo(MoreBitsLayers32));
    }

    [TestCase(GgufFileType.MostlyQ4_K_M, GgmlType.Q4_K)]
    [TestCase(GgufFileType.MostlyQ5_K_M, GgmlType.Q5_K)]
    public void KMediumMixOnLlama8B(GgufFileType ft, GgmlType baseType)
    {
        Assert.That(TypeOf8B("token_embd.weight", ft), Is.EqualTo(baseType), "untied token_embd keeps the default type");
        Assert.That(TypeOf8B("output.weight", ft), Is.EqualTo(GgmlType.Q6_K));
        Assert.That(TypeOf8B("output_norm.weight", ft), Is.EqualTo(GgmlType.F32));
        for (int i = 0; i < 32; i++)
        {
            var more = MoreBitsLayers32.Contains(i) ? GgmlType.Q6_K : baseType;
            Assert.That(TypeOf8B($"blk.{i}.attn_v.weight", ft), Is.EqualTo(more), $"attn_v {i}");
            Assert.That(TypeOf8B($"blk.{i}.ffn_down.weight", ft), Is.EqualTo(more), $"ffn_down {i}");
            foreach (var other in new[] { "attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up" })
                Assert.That(TypeOf8B($"blk.{i}.{other}.weight", ft), Is.EqualTo(baseType), $"{other} {i}");
            Assert.That(TypeOf8B($"blk.{i}.attn_norm.weight", ft), Is.EqualTo(GgmlType.F32));
            Assert.That(TypeOf8B($"blk.{i}.ffn_norm.weight", ft), Is.EqualTo(GgmlType.F32));
        }
        // A few spelled out: layers 4, 5 and 7 are the first without more bits; 6 and 28 have them.
        Assert.That(TypeOf8B("blk.4.attn_v.weight", ft), Is.EqualTo(baseType));
        Assert.That(TypeOf8B("blk.6.ffn_down.weight", ft), Is.EqualTo(GgmlType.Q6_K));
        Assert.That(TypeOf8B("blk.27.ffn_down.weight", ft), Is.EqualTo(GgmlType.Q6_K));
        Assert.That(TypeOf8B("blk.26.attn_v.weight", ft), Is.EqualTo(baseType));
        Assert.That(TypeOf8B("blk.28.attn_v.weight", ft), Is.EqualTo(GgmlType.Q6_K));
    }

    [TestCase(GgufFileType.MostlyQ6_K, GgmlType.Q6_K, GgmlType.Q6_K)]
    [TestCase(GgufFileType.MostlyQ8_0, GgmlType.Q8_0, GgmlType.Q8_0)]  // output stays Q8_0 in a Q8_0 file
    [TestCase(GgufFileType.MostlyQ4_0, GgmlType.Q4_0, GgmlType.Q6_K)]  // output gets Q6_K even in a Q4_0 file
    [TestCase(GgufFileType.MostlyF16, GgmlType.F16, GgmlType.F16)]
    [TestCase(GgufFileType.MostlyBF16, GgmlType.BF16, GgmlType.BF16)]
    [TestCase(GgufFileType.AllF32, GgmlType.F32, GgmlType.F32)]
    public void UniformFileTypes(GgufFileType ft, GgmlType weights, GgmlType output)
    {
        Assert.That(TypeOf8B("output.weight", ft), Is.EqualTo(output));
        Assert.That(TypeOf8B("token_embd.weight", ft), Is.EqualTo(weights));
        foreach (int i in new[] { 0, 5, 31 })
            foreach (var part in new[] { "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down" })
                Assert.That(TypeOf8B($"blk.{i}.{part}.weight", ft), Is.EqualTo(weights), $"{part} {i}");
        Assert.That(TypeOf8B("blk.0.attn_norm.weight", ft), Is.EqualTo(GgmlType.F32));
    }

    [Test]
    public void TiedEmbeddingsTakeTheOutputType()
    {
        var tied = Llama8B with { TiedEmbeddings = true };
        Assert.That(GgufQuantMix.TypeFor("token_embd.weight", [128256, 4096], -1, GgufFileType.MostlyQ4_K_M, tied), Is.EqualTo(GgmlType.Q6_K));
        Assert.That(GgufQuantMix.TypeFor("token_embd.weight", [128256, 4096], -1, GgufFileType.MostlyQ8_0, tied), Is.EqualTo(GgmlType.Q8_0));
    }

    [Test]
    public void RowsThatAreNotWholeSuperBlocksFallBack()
    {
        // Hidden 896 (896 % 256 = 128, 896 % 32 = 0), 24 layers, tied: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0;
        // the tied output/token_embd row is not whole blocks of the default type, so it is Q8_0.
        var m = GgufQuantMix.Model.ForLlama(24, 14, 2, tiedEmbeddings: true);
        Assert.That(GgufQuantMix.TypeFor("blk.4.attn_q.weight", [896, 896], 4, GgufFileType.MostlyQ4_K_M, m), Is.EqualTo(GgmlType.Q5_0));
        Assert.That(GgufQuantMix.TypeFor("blk.4.attn_q.weight", [896, 896], 4, GgufFileType.MostlyQ5_K_M, m), Is.EqualTo(GgmlType.Q5_1));
        Assert.That(GgufQuantMix.TypeFor("blk.0.attn_v.weight", [128, 896], 0, GgufFileType.MostlyQ4_K_M, m), Is.EqualTo(GgmlType.Q8_0));
        Assert.That(GgufQuantMix.TypeFor("blk.4.ffn_down.weight", [896, 4864], 4, GgufFileType.MostlyQ4_K_M, m), Is.EqualTo(GgmlType.Q4_K), "4864 = 19 × 256");
        Assert.That(GgufQuantMix.TypeFor("token_embd.weight", [151936, 896], -1, GgufFileType.MostlyQ4_K_M, m), Is.EqualTo(GgmlType.Q8_0));
        // Rows of 1000 are not whole blocks of 32 either: F16.
        Assert.That(GgufQuantMix.TypeFor("blk.1.ffn_down.weight", [512, 1000], 1, GgufFileType.MostlyQ4_K_M, new(6)), Is.EqualTo(GgmlType.F16));
    }

    [Test]
    public void Llama70BGivesAttnVMoreBits()
    {
        var m70 = GgufQuantMix.Model.ForLlama(80, 64, 8, tiedEmbeddings: false);
        Assert.That(m70.Is70B, Is.True);
        Assert.That(GgufQuantMix.Model.ForLlama(80, 64, 64, false).Is70B, Is.False, "80 layers without GQA is LLaMA 65B");
        // n/8 = 10: layer 10 has no extra bits (Q4_K), bumped to Q5_K for 70B; layer 12 = 10 + 2 gets Q6_K.
        Assert.That(GgufQuantMix.TypeFor("blk.10.attn_v.weight", [1024, 8192], 10, GgufFileType.MostlyQ4_K_M, m70), Is.EqualTo(GgmlType.Q5_K));
        Assert.That(GgufQuantMix.TypeFor("blk.12.attn_v.weight", [1024, 8192], 12, GgufFileType.MostlyQ4_K_M, m70), Is.EqualTo(GgmlType.Q6_K));
        Assert.That(GgufQuantMix.TypeFor("blk.10.ffn_down.weight", [8192, 28672], 10, GgufFileType.MostlyQ4_K_M, m70), Is.EqualTo(GgmlType.Q4_K));
    }

    [Test]
    public void OnlyMatricesNamedWeightAreQuantized()
    {
        Assert.That(GgufQuantMix.AllowsQuantization("blk.0.attn_q.weight", [4096, 4096]), Is.True);
        Assert.That(GgufQuantMix.AllowsQuantization("blk.0.attn_q.bias", [4096]), Is.False);
        Assert.That(GgufQuantMix.AllowsQuantization("blk.0.attn_q.weight", [1, 4096]), Is.False, "ggml_n_dims ignores outer 1s");
        Assert.That(GgufQuantMix.AllowsQuantization("blk.0.attn_norm.weight", [4096, 2]), Is.False, "norms never");
        Assert.That(GgufQuantMix.TypeFor("blk.0.attn_q.bias", [4096], 0, GgufFileType.MostlyQ4_K_M, Llama8B), Is.EqualTo(GgmlType.F32));
    }
}
