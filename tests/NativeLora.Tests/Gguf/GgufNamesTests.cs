using NativeLora.Gguf;

namespace NativeLora.Tests.Gguf;

public class GgufNamesTests
{
    [TestCase("model.embed_tokens.weight", "token_embd.weight")]
    [TestCase("model.norm.weight", "output_norm.weight")]
    [TestCase("lm_head.weight", "output.weight")]
    [TestCase("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight")]
    [TestCase("model.layers.7.self_attn.q_proj.weight", "blk.7.attn_q.weight")]
    [TestCase("model.layers.7.self_attn.q_proj.bias", "blk.7.attn_q.bias")]
    [TestCase("model.layers.12.self_attn.k_proj.weight", "blk.12.attn_k.weight")]
    [TestCase("model.layers.12.self_attn.v_proj.bias", "blk.12.attn_v.bias")]
    [TestCase("model.layers.31.self_attn.o_proj.weight", "blk.31.attn_output.weight")]
    [TestCase("model.layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight")]
    [TestCase("model.layers.3.mlp.gate_proj.weight", "blk.3.ffn_gate.weight")]
    [TestCase("model.layers.3.mlp.up_proj.weight", "blk.3.ffn_up.weight")]
    [TestCase("model.layers.79.mlp.down_proj.weight", "blk.79.ffn_down.weight")]
    public void MapsHfNames(string hf, string gguf)
    {
        Assert.That(GgufNames.FromHf(hf), Is.EqualTo(gguf));
        Assert.That(GgufNames.LayerOf(gguf), Is.EqualTo(gguf.StartsWith("blk.") ? int.Parse(gguf.Split('.')[1]) : -1));
    }

    [TestCase("model.layers.0.self_attn.rotary_emb.inv_freq")]
    [TestCase("model.layers.x.mlp.up_proj.weight")]
    [TestCase("model.layers.01.mlp.up_proj.weight")]
    [TestCase("model.layers.-1.mlp.up_proj.weight")]
    [TestCase("model.layers.0.mlp.up_proj")]
    [TestCase("model.layers.0.mlp.up_proj.weight.extra")]
    [TestCase("model.layers.0.lora_A.weight")]
    [TestCase("embed_tokens.weight")]
    public void RejectsUnknownNames(string hf)
    {
        Assert.That(GgufNames.TryFromHf(hf, out _), Is.False);
        var e = Assert.Throws<ArgumentException>(() => GgufNames.FromHf(hf))!;
        Assert.That(e.Message, Does.Contain(hf));
    }

    /// <summary>
    /// convert_hf_to_gguf's permute as an index formula of its own: view the rows as [heads, 2, half]
    /// (HF: each head's first half then second half) and swap the last two axes, so GGUF row
    /// h·2·half + 2·i + s holds HF row h·2·half + s·half + i.
    /// </summary>
    static int HfRowOf(int ggufRow, int rows, int heads)
    {
        int half = rows / heads / 2;
        int h = ggufRow / (2 * half), within = ggufRow % (2 * half);
        int i = within / 2, s = within % 2;
        return h * 2 * half + s * half + i;
    }

    [TestCase(8, 3, 2)]
    [TestCase(16, 5, 4)]
    [TestCase(12, 1, 3)] // a bias: one column
    [TestCase(64, 4, 1)]
    public void QkPermutationMatchesTheIndexFormula(int rows, int cols, int heads)
    {
        var hf = Enumerable.Range(0, rows * cols).Select(v => (float)v).ToArray();
        var gguf = GgufNames.PermuteQk<float>(hf, rows, cols, heads);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                Assert.That(gguf[r * cols + c], Is.EqualTo(hf[HfRowOf(r, rows, heads) * cols + c]), $"row {r} col {c}");
        Assert.That(gguf.OrderBy(v => v), Is.EqualTo(hf), "a permutation");
    }

    [Test]
    public void QkPermutationSmallCaseSpelledOut()
    {
        // One head, 4 rows (pairs (r0, r2) and (r1, r3) in HF's half-split layout): GGUF interleaves them as r0, r2, r1, r3.
        Assert.That(GgufNames.PermuteQk<int>([0, 1, 2, 3], 4, 1, 1), Is.EqualTo(new[] { 0, 2, 1, 3 }));
        // Two heads of 4: each head permuted on its own.
        Assert.That(GgufNames.PermuteQk<int>([0, 1, 2, 3, 4, 5, 6, 7], 8, 1, 2), Is.EqualTo(new[] { 0, 2, 1, 3, 4, 6, 5, 7 }));
    }

    [Test]
    public void KPermutationDependsOnTheKvHeadCount()
    {
        // Llama 3 shapes scaled down: 8 query heads, 2 kv heads, head_dim 4 → k_proj has 8 rows, permuted with n_head_kv = 2.
        var k = Enumerable.Range(0, 8 * 3).ToArray();
        Assert.That(GgufNames.PermuteQk<int>(k, 8, 3, 2), Is.Not.EqualTo(GgufNames.PermuteQk<int>(k, 8, 3, 4)));
    }

    [Test]
    public void PermutationRejectsBadShapes()
    {
        Assert.Throws<ArgumentException>(() => GgufNames.PermuteQk<float>(new float[6], 6, 1, 4), "6 rows are not 4 heads of pairs");
        Assert.Throws<ArgumentException>(() => GgufNames.PermuteQk<float>(new float[8], 4, 1, 1), "length mismatch");
        Assert.Throws<ArgumentOutOfRangeException>(() => GgufNames.QkSourceRow(8, 8, 2));
    }
}
