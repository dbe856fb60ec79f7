using NativeLora.Kernels;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.SafeTensors;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Model;

/// <summary>
/// llm.c's test_gpt2, for Llama: a decoder block and whole 2-layer models (embedding → blocks → norm
/// → chunked cross-entropy) forward and backward against PyTorch autograd in float64. The fixtures
/// come from tests/fixtures/make_llama_fixtures.py (Debian's python3-torch) and are committed.
/// Both kernel variants run. Loss within 1e-5 relative, every gradient within 1e-4 (‖Δ‖/‖ref‖).
/// </summary>
public class TorchParityTests
{
    private static string Fixture(string name) =>
        Path.Combine(Native.BindingCoverageTests.RepoRoot(), "tests", "fixtures", name);

    private static ModelConfig ConfigOf(SafeTensorsFile f, int vocab, int layers, bool tied) => new()
    {
        ModelType = "llama",
        VocabSize = vocab,
        HiddenSize = int.Parse(f.Metadata["hidden_size"]),
        IntermediateSize = int.Parse(f.Metadata["intermediate_size"]),
        NumLayers = layers,
        NumHeads = int.Parse(f.Metadata["num_attention_heads"]),
        NumKvHeads = int.Parse(f.Metadata["num_key_value_heads"]),
        HeadDim = int.Parse(f.Metadata["hidden_size"]) / int.Parse(f.Metadata["num_attention_heads"]),
        RmsNormEps = double.Parse(f.Metadata["rms_norm_eps"], System.Globalization.CultureInfo.InvariantCulture),
        RopeTheta = double.Parse(f.Metadata["rope_theta"], System.Globalization.CultureInfo.InvariantCulture),
        MaxPositionEmbeddings = 64,
        TieWordEmbeddings = tied,
    };

    private static Tensor Load(SafeTensorsFile f, string name, int[] shape)
    {
        var t = TestDevice.Shared.Allocate(DType.F32, shape);
        t.CopyFromFloats(f.ReadAsFloat32(name));
        return t;
    }

    private static double[] D(float[] a) => Ref.ToDouble(a);

    [Test]
    public void TwoLayerModelMatchesPyTorch([Values(false, true)] bool gpuVariant, [Values(false, true)] bool tied)
    {
        using var f = SafeTensorsFile.Open(Fixture(tied ? "llama_2layer_tied.safetensors" : "llama_2layer.safetensors"));
        int vocab = int.Parse(f.Metadata["vocab_size"]), layers = int.Parse(f.Metadata["num_hidden_layers"]);
        int batch = int.Parse(f.Metadata["batch"]), seq = int.Parse(f.Metadata["seq_len"]);
        var config = ConfigOf(f, vocab, layers, tied);
        var parameters = CausalLm.ExpectedParameters(config).ToDictionary(p => p.Name, p => Load(f, p.Name, p.Shape));
        using var model = new CausalLm(TestDevice.Shared, config, parameters) { Kernels = TestDevice.Variant(gpuVariant), CrossEntropyChunkRows = 5 };
        model.EnableFullGradients();
        var tokens = new TokenBatch(batch, seq, f.GetSpan<int>("input.input_ids").ToArray(), f.GetSpan<int>("input.labels").ToArray(),
            f.GetSpan<int>("input.position_ids").ToArray(), f.GetSpan<int>("input.segment_ids").ToArray());

        var (loss, count) = model.ForwardBackward(tokens);
        double expectedLoss = f.ReadAsFloat32("output.loss")[0];
        Assert.That(count, Is.EqualTo(tokens.Labels.Count(l => l != -100)));
        Assert.That(Math.Abs(loss - expectedLoss) / expectedLoss, Is.LessThan(1e-5), $"loss {loss} vs PyTorch {expectedLoss}");
        foreach (var (name, grad) in model.Gradients)
            Check.Close(grad.ToFloatArray(), D(f.ReadAsFloat32("grad." + name)), 1e-4, $"grad of {name} ({(gpuVariant ? "gpu" : "cpu")} variant, tied={tied})", 0);
        Assert.That(model.Gradients.Count, Is.EqualTo(CausalLm.ExpectedParameters(config).Count));

        var logits = model.Logits(tokens);
        Check.Close(logits, D(f.ReadAsFloat32("output.logits")), 1e-5, "logits", 0);
    }

    [Test]
    public void DecoderBlockMatchesPyTorch([Values(false, true)] bool gpuVariant)
    {
        using var f = SafeTensorsFile.Open(Fixture("llama_block.safetensors"));
        int batch = int.Parse(f.Metadata["batch"]), seq = int.Parse(f.Metadata["seq_len"]);
        var c = ConfigOf(f, 8, 1, false);
        var dev = TestDevice.Shared;
        var k = TestDevice.Variant(gpuVariant);
        int n = batch * seq;
        var names = new[] { "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
            "self_attn.v_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight" };
        var expected = CausalLm.ExpectedParameters(c).ToDictionary(p => p.Name.Replace("model.layers.0.", ""), p => p.Shape);
        var w = names.ToDictionary(x => x, x => Load(f, x, expected[x]));
        var grads = names.ToDictionary(x => x, x => { var g = dev.Allocate(DType.F32, expected[x]); ElementwiseOp.Zero(k, g); return g; });
        Linear L(string x) => new(x, w[x + ".weight"], null) { WeightGrad = grads[x + ".weight"] };
        var layer = new DecoderLayer(0, w["input_layernorm.weight"], w["post_attention_layernorm.weight"],
            new(L("self_attn.q_proj"), L("self_attn.k_proj"), L("self_attn.v_proj"), L("self_attn.o_proj"), L("mlp.gate_proj"), L("mlp.up_proj"), L("mlp.down_proj")))
        {
            InputNormGrad = grads["input_layernorm.weight"],
            PostNormGrad = grads["post_attention_layernorm.weight"],
        };
        var (cos, sin) = Rope.BuildTable(c.HeadDim, 64, c.RopeTheta, RopeScaling.None);
        using var tcos = Ref.Upload(DType.F32, cos, 64, c.HeadDim / 2);
        using var tsin = Ref.Upload(DType.F32, sin, 64, c.HeadDim / 2);
        using var x = Load(f, "input.hidden", new[] { n, c.HiddenSize });
        using var dOut = Load(f, "input.grad_output", new[] { n, c.HiddenSize });
        using var pos = Ref.UploadInts(f.GetSpan<int>("input.position_ids").ToArray());
        using var seg = Ref.UploadInts(f.GetSpan<int>("input.segment_ids").ToArray());
        using var y = Ref.Poisoned(DType.F32, n, c.HiddenSize);
        using var dx = Ref.Poisoned(DType.F32, n, c.HiddenSize);
        var shape = new AttentionShape(batch, seq, c.NumHeads, c.NumKvHeads, c.HeadDim);
        using var context = new ForwardContext { Device = dev, Kernels = k, Config = c, Rope = new(tcos, tsin), Positions = pos, Segments = seg, Shape = shape };
        using (var acts = layer.Forward(context, x, y, keep: true)!)
            layer.Backward(context, acts, dOut, dx);
        Check.Close(y.ToFloatArray(), D(f.ReadAsFloat32("output.hidden")), 1e-5, "block output", 0);
        Check.Close(dx.ToFloatArray(), D(f.ReadAsFloat32("grad.hidden")), 1e-4, "block dx", 0);
        foreach (var name in names)
            Check.Close(grads[name].ToFloatArray(), D(f.ReadAsFloat32("grad." + name)), 1e-4, "block grad " + name, 0);
        foreach (var t in w.Values.Concat(grads.Values)) t.Dispose();
    }
}
