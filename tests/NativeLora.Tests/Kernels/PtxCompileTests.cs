using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using NativeLora.Kernels;

namespace NativeLora.Tests.Kernels;

/// <summary>
/// Every kernel compiles to PTX offline (no GPU or driver needed), so a CUDA-only variant cannot
/// rot unseen on machines without a GPU. The PTX is also checked for local-memory spills in the
/// kernels that must not have any.
/// </summary>
public class PtxCompileTests
{
    private static Context? s_context;
    private static PTXBackend? s_backend;

    [OneTimeSetUp]
    public void CreateBackend()
    {
        s_context = Context.Create(b => b.Default().EnableAlgorithms());
        s_backend = new PTXBackend(s_context, CudaArchitecture.SM_80, CudaInstructionSet.ISA_80, null!);
    }

    [OneTimeTearDown]
    public void Dispose()
    {
        s_backend?.Dispose();
        s_context?.Dispose();
    }

    // (kernel, explicitly grouped?) — the grouped ones are the GPU variants.
    private static IEnumerable<(Delegate Kernel, bool Explicit)> Kernels()
    {
        foreach (var k in Instances<float, F32>()) yield return k;
        foreach (var k in Instances<ushort, Bf16>()) yield return k;
        foreach (var k in Instances<ushort, F16>()) yield return k;
        yield return ((Action<Index1D, ArrayView<ushort>, ArrayView<ushort>, long, long>)CastKernels.CastKernel<ushort, Bf16, ushort, F16>, false);
        yield return ((Action<Index1D, ArrayView<ushort>, ArrayView<ushort>, long, long>)CastKernels.CastKernel<ushort, F16, ushort, Bf16>, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>)Dora.RatioKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, int, long, long>)Dora.ScaleRowsKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float, float, float, float, float, float, float, float, long, long>)AdamW.UpdateKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, long, long>)AdamW.SumOfSquaresKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<byte>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AdamW8bit.Hyper>)AdamW8bit.UpdateKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, int, long, long>)Nf4.AbsmaxSumKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<byte>, ArrayView<float>, float, int, long, long>)Nf4.QuantizeAbsmaxKernel, false);
        yield return ((Action<Index1D, ArrayView<byte>, ArrayView<float>, ArrayView<float>, float, ArrayView<float>, int, long, long>)Nf4.DequantizeAbsmaxKernel, false);
        yield return ((Action<Index1D, ArrayView<uint>, ArrayView<float>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, float, ArrayView<float>, ArrayView<uint>, int, int, int>)Nf4.DequantizeWordsKernel<Bf16>, false);
        yield return ((Action<Index1D, ArrayView<uint>, ArrayView<float>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, float, ArrayView<float>, ArrayView<uint>, int, int, int>)Nf4.DequantizeWordsKernel<F16>, false);
        // GPTQ and AWQ (f32 only)
        yield return ((Action<Index1D, ArrayView<float>, int, int, int, ArrayView<int>>)Gptq.CholeskyDiagKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, int, int, int>)Gptq.CholeskyPanelKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, int, int, int>)Gptq.LowerSolveColumnKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, int>)Gptq.ZeroUpperKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, int, int, float>)Gptq.SetDiagonalKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, int, int>)Gptq.DeadColumnsKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, int>)Gptq.DiagonalKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, int, float>)Gptq.AddDiagonalKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, int, ArrayView<float>, ArrayView<float>, int, int>)Gptq.RowParamsKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, int, int, int, int, int>)Gptq.BlockKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>)Gptq.RtnKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>)Awq.QuantizeKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, int, int>)Awq.GroupAbsMaxKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>)Awq.WeightMeanKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, int, int>)Awq.InputMeanKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, int, int, long, long>)Awq.ScaleKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>)Awq.SquaredDiffRowsKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>)Awq.ClipSearchKernel, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<float>, int, int>)Awq.ClampKernel, false);
    }

    private static IEnumerable<(Delegate, bool)> Instances<T, S>() where T : unmanaged where S : struct, IStorage<T>
    {
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, long, long>)Elementwise.AddKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, float, long, long>)Elementwise.FillKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ulong, float, long, long>)Elementwise.FillUniformKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, int, long, long>)Bias.AddKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<float>, int, int>)Bias.GradKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<int>, ArrayView<T>, ArrayView<float>, int, int>)Embedding.BackwardKernel<T, S>, false);
        yield return ((Action<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<float>, int, float>)RmsNorm.ForwardGroupKernel<T, S>, true);
        yield return ((Action<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<float>, ArrayView<T>, ArrayView<T>, int>)RmsNorm.BackwardGroupKernel<T, S>, true);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<float>, ArrayView<float>, int, int>)RmsNorm.WeightGradKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int, int, float, long, long>)Rope.RotateKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ulong, float, long, long>)NativeLora.Kernels.Lora.DropoutKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ulong, float, long, long>)NativeLora.Kernels.Lora.DropoutBackwardKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, int, int, ulong, float>)NativeLora.Kernels.Lora.FusedDownKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, int, int, ulong, float>)NativeLora.Kernels.Lora.FusedDxKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<float>, int>)Dora.RowNormKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<float>, int, long, long>)Dora.CombineKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<float>, ArrayView<float>, int, int>)Dora.MagnitudeGradKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<float>, float, int, long, long>)Dora.ScaleColumnsKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, long, long>)SwiGlu.ForwardKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<T>, long, long>)SwiGlu.BackwardKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<float>, long, long>)CastKernels.CastKernel<T, S, float, F32>, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<T>, long, long>)CastKernels.CastKernel<float, F32, T, S>, false);
        yield return ((Action<ArrayView<float>, ArrayView<T>, ArrayView<int>, ArrayView<float>, int, float>)CrossEntropy.GroupKernel<T, S>, true);
        yield return ((Action<ArrayView<float>, ArrayView<T>, ArrayView<int>, ArrayView<float>, Attention.Block, long, int>)Attention.SoftmaxKernel<T, S>, true);
        yield return ((Action<ArrayView<float>, ArrayView<T>, ArrayView<int>, ArrayView<float>, Attention.Block, long, int>)Attention.RecomputeProbsKernel<T, S>, true);
        yield return ((Action<ArrayView<float>, ArrayView<T>, ArrayView<float>, Attention.Block, long, int>)Attention.GradScoresKernel<T, S>, true);
        yield return ((Action<ArrayView<T>, ArrayView<T>, ArrayView<float>, int, int, int, long, int>)Attention.RowDotKernel<T, S>, true);
        yield return ((Action<ArrayView<T>, ArrayView<T>, int, int, int>)Attention.PermuteKernel<T, S, T, S>, true);
        yield return ((Action<ArrayView<float>, ArrayView<T>, int, int, int>)Attention.PermuteKernel<float, F32, T, S>, true);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<int>, ArrayView<T>, int, int, int, int, int, float>)Attention.DecodeKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<int>, int, long, long>)RowScatter.ScatterKernel<T>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<int>, int, long, long>)RowScatter.GatherKernel<T>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<int>, ArrayView<float>, int, int, long, long>)MultiLora.ShrinkKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<float>, ArrayView<T>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<T>, int, int, long, long>)MultiLora.ExpandKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<T>, ArrayView<byte>, ArrayView<float>, long, int, long, long>)Nf4.QuantizeKernel<T, S>, false);
        yield return ((Action<Index1D, ArrayView<byte>, ArrayView<float>, ArrayView<float>, ArrayView<T>, long, int, long, long>)Nf4.DequantizeKernel<T, S>, false);
        yield return ((Action<ArrayView<T>, Nf4Weight, ArrayView<T>, int, int, int, long, long, int, int>)Nf4Matmul.TiledKernel<T, S>, true);
        yield return ((Action<Index1D, ArrayView<T>, Nf4Weight, ArrayView<T>, ArrayView<float>, int, int, int, long, long, int, long, long>)Nf4Matmul.ColumnsKernel<T, S>, false);
    }

    private static IEnumerable<TestCaseData> Cases() =>
        Kernels().Select(k => new TestCaseData(k.Kernel, k.Explicit).SetArgDisplayNames(Name(k.Kernel.Method)));

    private static string Name(MethodInfo m) =>
        $"{m.DeclaringType!.Name}.{m.Name}" + (m.IsGenericMethod ? $"<{string.Join(",", m.GetGenericArguments().Select(t => t.Name))}>" : "");

    [TestCaseSource(nameof(Cases))]
    public void CompilesToPtx(Delegate kernel, bool explicitlyGrouped)
    {
        var entry = explicitlyGrouped
            ? EntryPointDescription.FromExplicitlyGroupedKernel(kernel.Method)
            : EntryPointDescription.FromImplicitlyGroupedKernel(kernel.Method);
        var compiled = (PTXCompiledKernel)s_backend!.Compile(entry, KernelSpecialization.Empty);
        Assert.That(compiled.PTXAssembly, Does.Contain(".target sm_80"));
        Assert.That(compiled.PTXAssembly, Does.Contain(".entry"));
        // Only the decode attention kernel keeps per-thread rows (q, accumulators) in local memory by
        // design; anything else using .local has spilled. Exception: ILGPU passes an inline-PTX output operand
        // (CudaAsm.Emit with out) through one 4-byte local slot, which ptxas turns back into a register.
        if (kernel.Method.DeclaringType == typeof(Nf4) && kernel.Method.Name is nameof(Nf4.DequantizeAbsmaxKernel) or nameof(Nf4.DequantizeWordsKernel))
            Assert.That(compiled.PTXAssembly.Split('\n').Where(l => l.Contains(".local .align")).Select(l => l.Trim()),
                Is.EqualTo(new[] { ".local .align 4 .b8 __local_depot0[4];" }), "only the inline-PTX operand's 4-byte slot in local memory");
        else if (kernel.Method.DeclaringType == typeof(Nf4Matmul)) // the same absmax restore, inlined at each of its call sites
            Assert.That(compiled.PTXAssembly.Split('\n').Where(l => l.Contains(".local .align")).Select(l => l.Trim()),
                Is.All.Matches(@"^\.local \.align 4 \.b8 __local_depot\d+\[4\];$"), "only inline-PTX operands' 4-byte slots in local memory");
        else if (kernel.Method.DeclaringType != typeof(Attention) || !kernel.Method.Name.StartsWith("Decode"))
            Assert.That(compiled.PTXAssembly, Does.Not.Contain(".local"), "local memory in a kernel that should keep everything in registers");
    }

    [Test]
    public void EveryKernelMethodIsInTheList()
    {
        var listed = Kernels().Select(k => k.Kernel.Method).Select(m => m.IsGenericMethod ? m.GetGenericMethodDefinition() : m).ToHashSet();
        var all = typeof(KernelSet).Assembly.GetTypes()
            .SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Static | BindingFlags.DeclaredOnly))
            .Where(m => m.Name.EndsWith("Kernel") || m.GetParameters().FirstOrDefault()?.ParameterType == typeof(Index1D))
            .ToList();
        Assert.That(all, Has.Count.GreaterThan(20));
        var missing = all.Where(m => !listed.Contains(m)).Select(Name).ToList();
        Assert.That(missing, Is.Empty, "kernels not compiled to PTX by this test");
    }
}
