// UCE Erase Concepts: when the concept type changes, follow its default guide
// (art -> "art", object/custom -> "" = unconditional) unless the user typed their own.
// The defaults come from the node definition (Python is the single source of truth).
import { app } from "../../../scripts/app.js";

app.registerExtension({
  name: "uce.conceptTypePresets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "UCEEraseConcepts") return;
    const guides = nodeData.input?.required?.concept_type?.[1]?.uce_guides;
    if (!guides) return;
    const presetGuides = new Set(Object.values(guides));
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const typeWidget = this.widgets?.find((w) => w.name === "concept_type");
      const guideWidget = this.widgets?.find((w) => w.name === "guide");
      if (typeWidget && guideWidget) {
        const callback = typeWidget.callback;
        typeWidget.callback = function (value) {
          if (presetGuides.has(guideWidget.value.trim()) && value in guides) {
            guideWidget.value = guides[value];
          }
          return callback?.apply(this, arguments);
        };
      }
      return result;
    };
  },
});
