# NativeLora build script for Windows (mirrors build.sh; not yet exercised on a Windows machine).
#   .\build.ps1 [build|test|demo|bench]
# Native backend: CUDA when CMake finds the CUDA toolkit (CUDA_PATH), else CPU with OpenBLAS from
# vcpkg (set OPENBLAS_ROOT or VCPKG_ROOT; `vcpkg install openblas:x64-windows`).
param([ValidateSet("build", "test", "demo", "bench")][string]$Command = "build")
$ErrorActionPreference = "Stop"
Set-Location $PSScriptRoot
$Root = $PSScriptRoot
$Art = Join-Path $Root "artifacts"
$env:DOTNET_CLI_TELEMETRY_OPTOUT = "1"; $env:DOTNET_NOLOGO = "1"
$Backend = if ($env:NL_BACKEND) { $env:NL_BACKEND } else { "auto" }

function Need($exe, $hint) { if (-not (Get-Command $exe -ErrorAction SilentlyContinue)) { throw "$exe not found: $hint" } }
Need cmake "install CMake (winget install Kitware.CMake)"
Need dotnet "install the .NET 10 SDK (winget install Microsoft.DotNet.SDK.10)"

Write-Host "==> native core (CMake, backend $Backend)"
$cmakeArgs = @("-S", $Root, "-B", "$Art/native-build", "-DNL_BACKEND=$Backend")
if ($env:VCPKG_ROOT) { $cmakeArgs += "-DCMAKE_TOOLCHAIN_FILE=$env:VCPKG_ROOT/scripts/buildsystems/vcpkg.cmake" }
if ($env:OPENBLAS_ROOT) { $cmakeArgs += "-DCMAKE_PREFIX_PATH=$env:OPENBLAS_ROOT" }
cmake @cmakeArgs; if ($LASTEXITCODE) { throw "cmake configure failed" }
cmake --build "$Art/native-build" --config Release; if ($LASTEXITCODE) { throw "native build failed" }
New-Item -ItemType Directory -Force "$Art/native" | Out-Null
Get-ChildItem "$Art/native-build" -Recurse -Filter "nativelora.dll" | Select-Object -First 1 | Copy-Item -Destination "$Art/native/"

Write-Host "==> managed projects"
dotnet build "$Root/NativeLora.sln" -c Release -nologo -clp:ErrorsOnly; if ($LASTEXITCODE) { throw "dotnet build failed" }
dotnet publish "$Root/managed/NativeLora.Cli" -c Release -o "$Art/bin" --no-build -nologo | Out-Null
Move-Item -Force "$Art/bin/NativeLora.Cli.exe" "$Art/bin/nativelora.exe"

switch ($Command) {
  "test" {
    $results = "$Art/test-results"
    if (Test-Path $results) { Remove-Item -Recurse -Force $results }
    dotnet test "$Root/tests/NativeLora.Tests" -c Release --no-build --logger "trx;LogFileName=tests.trx" --results-directory $results
    $rc = $LASTEXITCODE
    [xml]$trx = Get-Content "$results/tests.trx"
    $c = $trx.TestRun.ResultSummary.Counters
    $failed = [int]$c.failed + [int]$c.error + [int]$c.timeout + [int]$c.aborted
    Write-Host "$($c.passed) passed, $failed failed, $([int]$c.total - [int]$c.executed) skipped"
    if ($rc -ne 0 -or $failed -ne 0) { exit 1 }
  }
  "demo" { & "$Art/bin/nativelora.exe" info; & "$Art/bin/nativelora.exe" selfcheck }
  "bench" { dotnet run --project "$Root/bench/NativeLora.Bench" -c Release --no-build -- $args }
}
