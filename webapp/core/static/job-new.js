// The submit page (templates/jobs/new.html), loaded at the end of its form.
// Picking a LoRA sets its default multiplier and shows its trigger word.
document.querySelectorAll(".lora-row select").forEach(select => select.addEventListener("change", () => {
  const option = select.selectedOptions[0], row = select.closest(".lora-row");
  row.querySelector("input[type=number]").value = option.dataset.multiplier || "";
  row.querySelector(".trigger").textContent = option.dataset.trigger ? `trigger word: ${option.dataset.trigger}` : "";
}));
// Show one empty row of each kind; "add" reveals the next one.
for (const kind of ["prompt", "lora"]) {
  const rows = [...document.querySelectorAll(`[data-row=${kind}]`)], add = document.querySelector(`[data-add=${kind}]`);
  const isEmpty = row => ![...row.querySelectorAll("textarea, select, input")].some(field => field.value);
  rows.filter(isEmpty).slice(1).forEach(row => { row.hidden = true; });
  const update = () => { add.hidden = !rows.some(row => row.hidden); };
  add.addEventListener("click", () => { const next = rows.find(row => row.hidden); if (next) next.hidden = false; update(); });
  update();
}
// An empty steps or guidance field takes the picked preset's value: show that one as its placeholder.
const preset = document.querySelector("select[data-prompt-values]");
if (preset) {
  const values = JSON.parse(preset.dataset.promptValues);
  const show = () => {
    for (const [name, value] of Object.entries(values[preset.value] || values.standard)) {
      document.querySelectorAll(`input[name$="-${name}"]`).forEach(input => { input.placeholder = value; });
    }
  };
  preset.addEventListener("change", show);
  show();
}
